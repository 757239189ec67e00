"""The MLflow UI as a person sees it, in Debian's Chromium driven by Playwright, opened by the
links the project prints: the experiment lands on its training runs (not on GenAI traces, where
MLflow's own link lands), the sweep parent says who won with a link per trial, the reconstruction
grid shows among the pretrain run's artifacts, the registered encoder carries its champion alias.

Screenshots (ui-*.png) go to $MAE_TRACKER_SCREENSHOTS (default: the test's tmp dir); the docs'
pictures in docs/images/ come from
``MAE_TRACKER_SCREENSHOTS=docs/images python -m pytest tests/test_ui.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow
import pytest

pytest.register_assert_rewrite("fixtures_team")
from fixtures_team import require  # noqa: E402

from mae_tracker.ui_links import experiment_route, model_route, run_route, ui_url  # noqa: E402

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
def test_the_ui_lands_on_training_runs_shows_who_won_a_reconstruction_and_the_champion(team_day, on_server,
                                                                                        browser_page, tmp_path):
    shots = Path(os.environ.get("MAE_TRACKER_SCREENSHOTS", tmp_path / "screenshots"))
    client = mlflow.MlflowClient()
    pretrain = client.get_run(team_day.pretrain_run_id)
    parent = client.get_run(team_day.parent_run_id)
    trials = {int(run.data.tags["mlflow.runName"].removeprefix("trial-")): run.info.run_id
              for run in client.search_runs([parent.info.experiment_id],
                                            f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert sorted(trials) == [0, 1]
    grid = sorted(a.path for a in client.list_artifacts(pretrain.info.run_id, "reconstructions")
                  if a.path.endswith(".png"))[0]
    promotion = team_day.promotion
    assert promotion.alias == "champion"
    check_ui(browser_page, on_server.url, shots, experiment_id=pretrain.info.experiment_id, sweep=team_day.study,
             parent_run_id=parent.info.run_id, trials=trials, winner=int(parent.data.tags["best_trial"]),
             pretrain_run_id=pretrain.info.run_id, grid=grid, model=promotion.registered_model,
             version=str(promotion.version))
    for name in SHOTS:
        assert 5_000 < (shots / name).stat().st_size < 300_000, name  # a picture, small enough for the docs


SHOTS = ("ui-experiment-genai-default.png",  # MLflow's own experiment link: the GenAI overview
         "ui-experiment-training-runs.png",  # ours: the runs table, the sweep parent expanded
         "ui-sidebar-toggle.png",  # the sidebar's GenAI / Model training toggle (a crop)
         "ui-sweep-parent-trials.png",  # the sweep parent's description: who won and why
         "ui-pretrain-reconstruction.png",  # the reconstruction grid among the pretrain run's artifacts
         "ui-registered-encoder-champion.png")  # the encoder version with its champion alias


def check_ui(page, url: str, shots: Path, *, experiment_id: str, sweep: str, parent_run_id: str,
             trials: dict[int, str], winner: int, pretrain_run_id: str, grid: str, model: str,
             version: str) -> None:
    """What a person does in the UI, as assertions; a screenshot of each view into ``shots``.

    Every page is opened by a URL the project prints or writes (:mod:`mae_tracker.ui_links`),
    in a browser whose GenAI / Model training toggle is at MLflow's default (GenAI)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)  # two busy cores: the UI takes its time
    shots.mkdir(parents=True, exist_ok=True)
    experiment_link = ui_url(experiment_route(experiment_id), url)
    assert experiment_link == f"{url}/#/experiments/{experiment_id}?workflowType=machine_learning"

    # Without the query (the link MLflow itself prints), a fresh browser lands on the GenAI view:
    # an overview of traces, none of the runs. This is why every link of ours carries it.
    page.goto(f"{url}/#/experiments/{experiment_id}")
    expect(page).to_have_url(re.compile(r"workflowType=genai"))
    expect(page.get_by_text("Detect Issues in Your Traces", exact=True)).to_be_visible()  # its first-visit tip
    page.get_by_role("button", name="Got it").click()
    expect(page.get_by_role("heading", name="Overview", exact=True)).to_be_visible()
    expect(page.get_by_text("Detect Issues", exact=True).first).to_be_visible()
    _close_assistant(page)
    page.screenshot(path=str(shots / SHOTS[0]))

    # (a) The experiment link we print lands on the training runs table, not on traces, even
    # though this browser's toggle was just left on GenAI.
    page.goto(experiment_link)
    expect(page).to_have_url(re.compile(rf"#/experiments/{experiment_id}/runs\?.*workflowType=machine_learning"))
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    parent_row = page.get_by_role("row").filter(has=page.get_by_text(sweep, exact=True))
    expect(parent_row).to_be_visible()
    expect(page.get_by_role("row").filter(has=page.get_by_text(re.compile(r"^pretrain-")))).not_to_have_count(0)
    expect(page.get_by_text("Detect Issues", exact=True)).to_have_count(0)
    expect(page.get_by_text(re.compile(r"^\s*\d+\s+traces?\s*$", re.I))).to_have_count(0)
    _close_assistant(page)
    parent_row.locator("button[data-component-id*='runnamecellrenderer']").first.click()  # the [+] expander
    for number in trials:
        expect(page.get_by_text(f"trial-{number}", exact=True).first).to_be_visible()
    page.screenshot(path=str(shots / SHOTS[1]))
    # the sidebar's toggle, now on "Model training", beside the page it chose: a crop from the
    # logo down to the model registry entry
    toggle = page.get_by_text("GenAI", exact=True).first.locator("xpath=../..")
    expect(toggle).to_contain_text("Model training")
    registry = page.get_by_text("Model registry", exact=True).first.bounding_box()
    page.screenshot(path=str(shots / SHOTS[2]),
                    clip={"x": 0, "y": 0, "width": 640, "height": registry["y"] + registry["height"] + 24})

    # (b) The sweep parent's page (the link the sweep prints): its description is the table of
    # trials, the winner marked, a link per trial into the training view, and what it means.
    page.goto(ui_url(run_route(experiment_id, parent_run_id), url))
    note = page.get_by_test_id("note-editor-preview-content")
    expect(note.get_by_role("heading", name=re.compile(rf"^Sweep {re.escape(sweep)}: "))).to_be_visible()
    more = page.get_by_text("Show more", exact=True)
    if more.count():
        more.first.click()
    for number, run_id in trials.items():
        link = note.get_by_role("link", name=str(number), exact=True)
        expect(link).to_have_attribute("href", ui_url(run_route(experiment_id, run_id), url))
        row = note.locator("tr").filter(has=page.get_by_role("link", name=str(number), exact=True))
        if number == winner:
            expect(row.locator("td").last).to_have_text("W")  # the mark column
        else:
            expect(row.locator("td").last).not_to_contain_text("W")
    for line in (f"Winner: trial {winner} ", "Champion: ", "Margin: ", "Parameter importances: "):
        expect(note).to_contain_text(line)
    _close_assistant(page)
    page.get_by_text("Description", exact=True).first.evaluate("n => n.scrollIntoView({block: 'start'})")
    page.screenshot(path=str(shots / SHOTS[3]))

    # (c) The pretrain run (the link pretrain prints), its Artifacts tab: the reconstruction
    # grid, opened, is shown as an image.
    page.goto(ui_url(run_route(experiment_id, pretrain_run_id), url))
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("reconstructions", exact=True).first.click()
    page.get_by_text(Path(grid).name, exact=True).first.click()
    expect(page.get_by_text(grid, exact=True).first).to_be_visible()
    image = page.locator("img[src^='blob:']").first
    expect(image).to_be_visible()
    page.wait_for_function("i => i.complete && i.naturalWidth > 500", arg=image.element_handle())
    _close_assistant(page)
    _screenshot_down_to(page, image, shots / SHOTS[4])  # all 8 jets and the colour bars

    # (d) The registry (the links promote prints): the family lists the version with the
    # champion alias, and the version's page says it too.
    page.goto(ui_url(model_route(model), url))
    row = page.get_by_role("row").filter(has=page.get_by_text(f"Version {version}", exact=True))
    expect(row).to_contain_text("champion")
    page.goto(ui_url(model_route(model, version), url))
    expect(page.get_by_role("heading", name=f"Version {version}")).to_be_visible()
    aliases = page.get_by_test_id("descriptions-item").filter(has=page.get_by_text("Aliases", exact=True))
    expect(aliases).to_contain_text("champion")
    _close_assistant(page)
    page.screenshot(path=str(shots / SHOTS[5]))


def _screenshot_down_to(page, element, path: Path, margin: int = 16) -> None:
    """A screenshot of the page, made taller (same width) until ``element`` is shown whole: the
    UI scrolls inside its own panes, so a full-page screenshot would still cut a tall image off."""
    size = page.viewport_size
    hidden = "n => { let bottom = window.innerHeight; for (let a = n.parentElement; a; a = a.parentElement) {" \
             " if (getComputedStyle(a).overflowY !== 'visible') bottom = Math.min(bottom, a.getBoundingClientRect()" \
             ".bottom); } return n.getBoundingClientRect().bottom - bottom; }"  # pixels cut off below
    for _ in range(4):  # the layout reflows at each new height
        cut = element.evaluate(hidden)
        if cut <= 0:
            break
        page.set_viewport_size({"width": size["width"], "height": page.viewport_size["height"] + int(cut) + margin})
        page.wait_for_timeout(500)
    assert element.evaluate(hidden) <= 0, "the image does not fit in the screenshot"
    page.screenshot(path=str(path))
    page.set_viewport_size(size)


def _close_assistant(page) -> None:
    """MLflow 3.17 opens its chat-assistant side panel on every page; it only hides the view."""
    close = page.get_by_role("button", name="Close")
    try:
        close.first.click(timeout=3000)
    except Exception:  # noqa: BLE001 - no panel this time
        pass
