"""The MLflow UI as a person sees it, in Debian's Chromium driven by Playwright: the team's
experiment with the sweep parent and its trials nested, a reconstruction image among the
pretrain run's artifacts, and the registered encoder with its champion alias.

Screenshots go to $MAE_TRACKER_SCREENSHOTS (default: the test's tmp dir).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlflow
import pytest

pytest.register_assert_rewrite("fixtures_team")
from fixtures_team import require

pytest_plugins = ["fixtures_team"]

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser_page(tmp_path_factory):
    require(Path(CHROMIUM).exists(), f"Chromium is not installed at {CHROMIUM} (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "Playwright is not installed: pip install 'mae-tracker[browser]'")
    # Chromium writes its crash-report settings and dconf cache under $HOME: a temp home instead.
    home = tmp_path_factory.mktemp("browser-home")
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_CACHE_HOME": str(home / ".cache")}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, env=env,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


@pytest.mark.slow
def test_the_ui_shows_the_sweep_tree_a_reconstruction_and_the_champion(team_day, on_server, browser_page, tmp_path):
    shots = Path(os.environ.get("MAE_TRACKER_SCREENSHOTS", tmp_path / "screenshots"))
    client = mlflow.MlflowClient()
    pretrain = client.get_run(team_day.pretrain_run_id)
    grid = sorted(a.path for a in client.list_artifacts(pretrain.info.run_id, "reconstructions")
                  if a.path.endswith(".png"))[0]
    promotion = team_day.promotion
    assert promotion.alias == "champion"
    check_ui(browser_page, on_server.url, shots, experiment_id=pretrain.info.experiment_id, sweep=team_day.study,
             pretrain_run_id=pretrain.info.run_id, grid=grid, model=promotion.registered_model,
             version=promotion.version)
    for name in SHOTS:
        assert (shots / name).stat().st_size > 10_000
    if os.environ.get("MAE_TRACKER_DOCS_SCREENSHOT"):  # refresh the README's picture by hand
        shutil.copy(shots / SHOTS[0], os.environ["MAE_TRACKER_DOCS_SCREENSHOT"])


SHOTS = ("experiment-sweep-tree.png", "pretrain-reconstruction.png", "registered-encoder.png")


def check_ui(page, url: str, shots: Path, *, experiment_id: str, sweep: str, pretrain_run_id: str, grid: str,
             model: str, version: str) -> None:
    """What a person does in the UI, as assertions; screenshots of each view into ``shots``."""
    from playwright.sync_api import expect

    shots.mkdir(parents=True, exist_ok=True)

    # The experiment opens on its training runs; the sweep parent, expanded, shows its trials.
    page.goto(f"{url}/#/experiments/{experiment_id}/runs")
    page.get_by_text(sweep, exact=True).first.wait_for()
    _close_assistant(page)
    parent_row = page.get_by_role("row").filter(has=page.get_by_text(sweep, exact=True))
    parent_row.locator("button[data-component-id*='runnamecellrenderer']").first.click()  # the [+] expander
    for number in (0, 1):
        page.get_by_text(f"trial-{number}", exact=True).first.wait_for()
    page.screenshot(path=str(shots / SHOTS[0]))

    # The pretrain run's artifacts: the reconstruction grid previews as an image.
    page.goto(f"{url}/#/experiments/{experiment_id}/runs/{pretrain_run_id}/artifacts")
    _close_assistant(page)
    page.get_by_text("reconstructions", exact=True).first.click()
    page.get_by_text(Path(grid).name, exact=True).first.click()
    expect(page.get_by_text(f"{grid}", exact=False).first).to_be_visible()
    page.wait_for_function("() => [...document.images].some(i => i.complete && i.naturalWidth > 500)")
    page.screenshot(path=str(shots / SHOTS[1]))

    # The registry: the encoder family, its version with the champion alias.
    page.goto(f"{url}/#/models/{model}")
    _close_assistant(page)
    row = page.get_by_role("row").filter(has=page.get_by_text(f"Version {version}", exact=True))
    expect(row).to_contain_text("champion")
    page.screenshot(path=str(shots / SHOTS[2]))


def _close_assistant(page) -> None:
    """MLflow 3.17 opens its chat-assistant side panel on every page; it only hides the view."""
    close = page.get_by_role("button", name="Close")
    try:
        close.first.click(timeout=3000)
    except Exception:  # noqa: BLE001 - no panel this time
        pass
