"""The docs site and the README: `mkdocs build --strict` (broken links, missing anchors and pages
left out of the nav fail it), the README's shape, and every command of the quick start
(docs/getting-started.md) run on a small jet file."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from fixtures_team import free_port, wait_for, wait_for_export_line
from jet_h5 import sparse_images, write_jets

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
QUICK_START = DOCS / "getting-started.md"
README_COMMANDS = (
    "bash scripts/setup.sh && . .venv/bin/activate && mlflow run . -e pretrain --env-manager local "
    "--experiment-name mae-tracker",
    "bash scripts/setup.sh --tests && .venv/bin/python -m pytest",
)
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block, in order."""
    return [(info.strip(), body) for info, body in FENCE.findall(text)]


def commands(body: str) -> list[str]:
    return [line.strip() for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# --------------------------------------------------------------------------- the site


def test_mkdocs_build_strict_passes_and_writes_only_into_its_site_dir(tmp_path):
    site = tmp_path / "site"
    had_site = (ROOT / "site").exists()
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert (site / "index.html").exists() and (site / "field-notes" / "index.html").exists()
    assert (ROOT / "site").exists() == had_site, "the build wrote site/ into the checkout"


def _nav_files(entries: object) -> list[str]:
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, list):
        return [name for entry in entries for name in _nav_files(entry)]
    if isinstance(entries, dict):
        return [name for value in entries.values() for name in _nav_files(value)]
    return []


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs" and config["theme"]["name"] == "material"
    nav = _nav_files(config["nav"])
    pages = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    assert len(nav) == len(set(nav)), "a page is listed twice"
    # ... and strict mode would also fail on one left out (validation.nav.omitted_files: warn)
    assert config["validation"]["nav"]["omitted_files"] == "warn"
    assert all(config["validation"]["links"][key] == "warn"
               for key in ("not_found", "unrecognized_links", "anchors"))


# --------------------------------------------------------------------------- the README


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    blocks = fenced_blocks(text)
    assert [commands(body) for _, body in blocks[:2]] == [[command] for command in README_COMMANDS]
    first_heading = text.index("\n## ")
    assert text.index(README_COMMANDS[1]) < first_heading, "the two commands come before anything else"


def test_readme_links_point_at_files_that_exist():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [target.split("#")[0] for target in targets if "://" not in target]
    assert local, "the README links to the docs"
    missing = [target for target in local if not (ROOT / target).exists()]
    assert not missing


# --------------------------------------------------------------------------- the quick start

SWEEP_CONFIG = "sweeps/quick.yaml"
TINY_PRETRAIN = {"epochs": 1, "batch_size": 32, "eval_jets": 64, "image_jets": 1, "probe_train_jets": 64,
                 "probe_val_jets": 64, "num_threads": 2}


def separable_jets(path: Path, n: int = 400) -> Path:
    """32x32x3 jets whose classes differ in occupancy: a 1-epoch encoder's probe is clear of chance,
    so the quick start's promote registers it."""
    quarks = sparse_images(n // 2, 3, 32, 32, occupancy=0.03, seed=1)
    gluons = sparse_images(n // 2, 3, 32, 32, occupancy=0.15, seed=2)
    images = np.empty((n, 3, 32, 32), np.float32)
    images[0::2], images[1::2] = quarks, gluons
    write_jets(path, images, np.arange(n) % 2 == 0)
    return path


def tiny_sweep_config(work: Path) -> None:
    """sweeps/quick.yaml as shipped, with one short trial (the command line stays the same)."""
    spec = yaml.safe_load((ROOT / SWEEP_CONFIG).read_text())
    spec["n_trials"] = 1
    spec["fixed"].update(epochs=1, batch_size=32, max_jets=0, eval_jets=64, probe_train_jets=64,
                         probe_val_jets=64, image_jets=1)
    spec["downstream"].update(epochs=1, batch_size=32)
    (work / "sweeps").mkdir()
    (work / SWEEP_CONFIG).write_text(yaml.safe_dump(spec))


def on_small_data(command: str, data: Path) -> str:
    """The command as run by the test: the same words, plus options that make it small."""
    words = command.split()
    if words[:2] == ["mlflow", "run"]:
        assert words[2] == ".", command
        params = {"data": data, **TINY_PRETRAIN}
        return " ".join(["mlflow", "run", str(ROOT), *words[3:]] + [f"-P {k}={v}" for k, v in params.items()])
    if words[0] != "mae-tracker":
        raise AssertionError(f"the quick start shows a command this test does not run: {command!r}")
    small = {
        "finetune": "--epochs 1 --batch-size 32 --num-threads 2 --no-progress",
        "probe": "--epochs 1 --batch-size 32 --num-threads 2 --no-progress",
        "scratch": f"--data {data} --epochs 1 --batch-size 32 --num-threads 2 --no-progress",
        "promote": "",
        "sweep": f"--data {data} --no-progress",
        "report": "",
    }
    assert words[1] in small, f"add small-data options for {command!r} to this test"
    return f"{command} {small[words[1]]}".strip()


def run_server(command: str, env: dict[str, str], work: Path) -> None:
    """`mae-tracker server` runs until stopped: start it on a free port, see the UI answer, stop it."""
    port = free_port()
    proc = subprocess.Popen(["bash", "-c", f"exec {command} --port {port}"], cwd=work, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_export_line(proc, url, lines)

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                    return reply.status == 200
            except OSError:
                return False

        wait_for(answers, 120, "the server's /health")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.communicate(timeout=60)


@pytest.mark.slow
def test_every_quick_start_command_runs_on_small_data(tmp_path, monkeypatch):
    """Each command of docs/getting-started.md, in order, on a 400-jet file: `mlflow run` and
    `mae-tracker server` as processes, the `mae-tracker` commands through the same click entry
    point in this process (saving a torch + MLflow import per command)."""
    from click.testing import CliRunner

    from conftest import own_tracking_store
    from mae_tracker.cli import main

    blocks = [body for info, body in fenced_blocks(QUICK_START.read_text()) if info.split()[:1] == ["bash"]]
    steps = [command for body in blocks for command in commands(body)]
    assert not any(step.endswith("\\") for step in steps), "one command per line"

    # Install: the test runs inside the environment that line builds (it is not rerun here: it
    # installs packages); activating it means its bin/ first on PATH.
    install = steps.pop(0).split(" && ")
    assert install == ["bash scripts/setup.sh", ". .venv/bin/activate"]
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "mae-tracker").exists() and (bin_dir / "mlflow").exists()

    work = tmp_path / "work"
    work.mkdir()
    data = separable_jets(tmp_path / "jets.h5")
    tiny_sweep_config(work)
    monkeypatch.chdir(work)  # the commands' defaults: ./mlflow.db, ./report/, sweeps/quick.yaml
    monkeypatch.setenv("MAE_TRACKER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MAE_TRACKER_OPTUNA_STORAGE"):
        monkeypatch.delenv(key, raising=False)
    ids: dict[str, str] = {}
    ran = []
    with own_tracking_store(work):  # sqlite:///<work>/mlflow.db, what the commands default to here
        client = mlflow.MlflowClient()
        for step in steps:
            for name, value in ids.items():
                step = step.replace(f"<{name}>", value)
            assert "<" not in step, f"a placeholder the test cannot fill: {step}"
            words = step.split()
            ran.append(words[1])
            if words[:2] == ["mae-tracker", "server"]:
                run_server(step, dict(os.environ), work)
                continue
            command = on_small_data(step, data)
            if words[0] == "mlflow":
                done = subprocess.run(["bash", "-c", command], cwd=work, env=dict(os.environ), capture_output=True,
                                      text=True, timeout=600)
                assert done.returncode == 0, (command, (done.stdout + done.stderr)[-4000:])
                experiment = client.get_experiment_by_name("mae-tracker")
                (pretrain,) = client.search_runs([experiment.experiment_id], "tags.arm = 'pretrain'")
                assert pretrain.info.status == "FINISHED"
                ids["pretrain_run_id"] = pretrain.info.run_id
                continue
            result = CliRunner().invoke(main, shlex.split(command)[1:])
            assert result.exit_code == 0, (command, result.output[-4000:], result.exception)
            assert mlflow.active_run() is None
            if words[1] == "sweep":
                ids["sweep_parent_run_id"] = re.search(r"MLflow parent run ([0-9a-f]{32})", result.output).group(1)
            if words[1] == "promote":
                assert "champion" in result.output, result.output

        assert ran == ["run", "finetune", "probe", "scratch", "promote", "sweep", "report", "server"]
        arms = {run.data.tags.get("arm") for run in client.search_runs(
            [client.get_experiment_by_name("mae-tracker").experiment_id])}
        assert {"pretrain", "finetune", "probe", "scratch"} <= arms
    assert (work / "report" / "report.md").exists() and (work / "report" / "report.html").exists()
