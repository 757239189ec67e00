"""What a physicist sees: UI links that open MLflow's training view, progress that suits a log
file (also under `mlflow run`), what to do after pretraining, no MLflow link into the GenAI view,
and a sweep's objective named in Optuna and on its trials."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from tqdm import tqdm

from mae_tracker import progress, ui_links
from mae_tracker.report.render import html_page, markdown, Paragraph

pytest.register_assert_rewrite("fixtures_team")
from fixtures_team import client_env  # noqa: E402

pytest_plugins = ["fixtures_team"]

ROOT = Path(__file__).resolve().parents[1]
UI_JS = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"


def test_links_carry_the_workflow_in_the_hash_route():
    sqlite = "sqlite:////data/mlflow.db"
    run = ui_links.where_to_look(ui_links.run_route("3", "abc123"), sqlite)
    assert run == ("mlflow ui --backend-store-uri sqlite:////data/mlflow.db  then open "
                   "http://127.0.0.1:5000/#/experiments/3/runs/abc123?workflowType=machine_learning")
    server = "https://alice:secret@mlflow.lab.org:5000/"
    assert ui_links.where_to_look(ui_links.model_route("mae-vit-32x32x3", 2), server) == (
        "https://mlflow.lab.org:5000/#/models/mae-vit-32x32x3/versions/2?workflowType=machine_learning")
    assert ui_links.ui_url(ui_links.experiment_route("7"), server).endswith(
        "/#/experiments/7?workflowType=machine_learning")
    assert "secret" not in ui_links.ui_command("postgresql://u:secret@db/mlflow")


def test_the_shipped_ui_reads_workflow_type_from_the_hash_routes_query():
    """Why the parameter goes after the hash: the bundled UI uses a hash router (location from
    ``window.location.hash``) and reads workflowType from the router's search params."""
    bundle = "".join(p.read_text(errors="ignore") for p in UI_JS.glob("main.*.js"))
    assert "e.location.hash.substr(1)" in bundle  # createHashRouter's history
    assert 'e.get("workflowType")' in bundle and 'MACHINE_LEARNING="machine_learning"' in bundle
    for route in ('"/experiments/:experimentId/runs/:runUuid"', '"/models/:modelName/versions/:version"',
                  '"/experiments"'):
        assert route in bundle


def test_report_links_its_source_in_the_training_view(tmp_path):
    text = "In the MLflow UI: `mlflow ui`, then http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning"
    page = html_page([Paragraph(text)], "t", tmp_path)
    assert '<a href="http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning">' in page
    assert "workflowType=machine_learning" in markdown([Paragraph(text)])


def test_downstream_commands_end_with_the_run_link_and_the_promote_command(monkeypatch):
    from mae_tracker.next_steps import after_classifier

    experiment_id = mlflow.set_experiment("what-you-see").experiment_id
    with mlflow.start_run() as run:
        pass
    run_id = run.info.run_id
    view, promote = after_classifier(run_id)
    assert view.endswith(f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning")
    assert view.startswith(f"view the run: mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}")
    assert promote.startswith(f"next: mae-tracker promote {run_id}")
    monkeypatch.setenv("RANK", "1")  # torchrun: only rank 0 says it
    assert after_classifier(run_id) == []


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_log(monkeypatch, capsys):
    monkeypatch.setattr(progress, "is_interactive", lambda: True)
    bar = progress.progress_bar(range(3), desc="x")
    assert isinstance(bar, tqdm) and not isinstance(bar, progress.LineProgress)
    bar.close()
    progress.progress_line("epoch 0 done")  # the bar said it: no line on a terminal
    assert "epoch 0 done" not in capsys.readouterr().err
    monkeypatch.setattr(progress, "is_interactive", lambda: False)
    with progress.progress_bar(total=500, desc="generate jets.h5", unit="jet") as bar:
        bar.update(250)
        bar.update(250)
    assert list(progress.progress_bar(range(3), desc="epoch", lines=False)) == [0, 1, 2]
    progress.progress_line("epoch 1 done")
    progress.progress_line("hidden", enabled=False)
    out = capsys.readouterr()
    assert out.err.splitlines() == ["generate jets.h5: 250/500 jet in 0 s", "generate jets.h5: 500/500 jet in 0 s",
                                    "epoch 1 done"]  # on stderr, where tqdm draws: stdout keeps the results
    assert out.out == ""
    assert "\r" not in out.err + out.out


@pytest.mark.slow
def test_pretrain_into_a_file_prints_a_line_per_epoch_and_what_to_do_next(jets_file, tmp_path):
    log = tmp_path / "pretrain.log"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    with log.open("w") as out:
        subprocess.run([sys.executable, "-m", "mae_tracker.cli", "pretrain", "--data", str(jets_file),
                        "--epochs", "2", "--batch-size", "32", "--depth", "1", "--probe-train-jets", "64",
                        "--probe-val-jets", "64", "--eval-jets", "64", "--image-every", "0",
                        "--num-threads", "1", "--experiment", "what-you-see"],
                       stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, check=True, timeout=300)
    text = log.read_bytes().decode()  # not read_text: universal newlines would hide a "\r"
    assert "\r" not in text, text
    epochs = [line for line in text.splitlines() if line.startswith("pretrain epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["pretrain epoch 0", "pretrain epoch 1"], text
    assert "train_loss" in epochs[0] and "img/s" in epochs[0]
    assert len(text.splitlines()) < 30, text
    run_id = re.search(r"^run ([0-9a-f]{32}):", text, re.M).group(1)
    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    uri = os.environ["MLFLOW_TRACKING_URI"]
    assert (f"view the run: mlflow ui --backend-store-uri {uri}  then open http://127.0.0.1:5000/#/experiments/"
            f"{experiment_id}/runs/{run_id}?workflowType=machine_learning") in text
    assert f"next: mae-tracker finetune --encoder-uri runs:/{run_id}/encoder" in text
    assert "mae-tracker sweep sweeps/" in text


@pytest.mark.slow
@pytest.mark.parametrize("store", ["local", "server"])
def test_mlflow_run_pretrain_into_a_file_is_a_line_per_epoch_and_links_only_the_training_view(
        store, jets_file, tmp_path, request):
    """The first-run log as `mlflow run . -e pretrain --env-manager local > log 2>&1` leaves it:
    one line per epoch, no carriage-return progress, and every URL in it opens the training view.

    On a tracking server MLflow 3.17's launcher (the `mlflow run` process, not ours) prints its own
    "🏃 View run ... at: <url>" without workflowType after every run: its _maybe_set_run_terminated
    passes the status string to RunStatus.is_terminated, which wants the int, so it always ends
    the run again and prints. Only MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT in the shell that starts
    `mlflow run` silences it (the docs say to export it); our own process sets it by itself
    (test_a_command_on_a_server_links_only_the_training_view)."""
    if store == "server":
        uri = request.getfixturevalue("mlflow_server").url
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = client_env(uri, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)  # train/tracking.py sets it in this test process
    if store == "server":
        env["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # the launcher's, as the docs say to export
    epochs = 3
    params = {"data": jets_file, "epochs": epochs, "batch_size": 32, "depth": 1, "probe_train_jets": 64,
              "probe_val_jets": 64, "eval_jets": 64, "image_every": 0, "num_threads": 1}
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", "pretrain", "--env-manager",
               "local", "--experiment-name", f"what-you-see-mlflow-run-{store}"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    log = tmp_path / "pretrain.log"
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=600)
    raw = log.read_bytes().decode()  # not read_text: universal newlines would hide a "\r"
    assert done.returncode == 0, raw[-3000:]
    assert "\r" not in raw, raw
    assert "Add type hints" not in raw and "\x1b[" not in raw, raw  # no coloured MLflow warnings
    lines = raw.splitlines()
    epoch_lines = [line for line in lines if line.startswith("pretrain epoch ")]
    assert [line.split(":")[0] for line in epoch_lines] == [f"pretrain epoch {n}" for n in range(epochs)], raw
    # about one line per epoch: the rest is a fixed handful (the launcher's, the result, what next)
    assert len(lines) - len(epoch_lines) < 25, raw
    ours = [line for line in lines if "=== Running command " not in line]  # the launcher echoes every -P
    assert max(len(line) for line in ours) < 400, raw  # no progress bar folded into one long line
    run_id = re.search(r"^run ([0-9a-f]{32}):", raw, re.M).group(1)
    assert f"=== Run (ID '{run_id}') succeeded ===" in raw  # the launcher's run is the one we report
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.project.entryPoint"] == "pretrain"
    base = uri if store == "server" else "http://127.0.0.1:5000"
    link = f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}?workflowType=machine_learning"
    assert f"view the run: {link}" in raw or f"then open {link}" in raw, raw
    urls = re.findall(r"https?://\S+/#/\S*", raw)  # links into the UI (not the docs' in a warning)
    assert urls and all("workflowType=machine_learning" in url for url in urls), urls
    assert "View run" not in raw and "View experiment" not in raw, raw


@pytest.mark.slow
def test_a_command_on_a_server_links_only_the_training_view(mlflow_server, jets_file, tmp_path):
    """`mae-tracker pretrain` on a tracking server: MLflow would end the run with "🏃 View run ...
    at: <url>" (no workflowType: the GenAI view); train/tracking.py turns that off by default
    (MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT), so the run's only link is ours."""
    env = client_env(mlflow_server.url)
    env.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)  # the project's default, not the test's
    done = subprocess.run([sys.executable, "-m", "mae_tracker", "pretrain", "--data", str(jets_file), "--epochs",
                           "1", "--batch-size", "32", "--depth", "1", "--probe-train-jets", "64",
                           "--probe-val-jets", "64", "--eval-jets", "64", "--image-every", "0",
                           "--num-threads", "1", "--experiment", "what-you-see-server"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout + done.stderr
    run_id = re.search(r"^run ([0-9a-f]{32}):", out, re.M).group(1)
    experiment_id = mlflow.MlflowClient(tracking_uri=mlflow_server.url).get_run(run_id).info.experiment_id
    link = f"{mlflow_server.url}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    assert f"view the run: {link}\n" in out, out
    urls = re.findall(r"https?://\S+/#/\S*", out)  # links into the UI
    assert urls and all("workflowType=machine_learning" in url for url in urls), urls
    assert "View run" not in out and "View experiment" not in out, out


@pytest.mark.slow
def test_mlflow_alone_links_a_server_run_into_the_genai_view(on_server, monkeypatch, capsys):
    """Why the project silences MLflow's own run link: on a server, MLflow 3 prints one when a run
    ends, and it has no workflowType (the UI then opens Traces, not the runs table)."""
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")
    client = mlflow.MlflowClient()  # not mlflow.set_experiment: it would export the experiment id
    experiment_id = client.create_experiment(f"what-you-see-mlflow-link-{time.time_ns()}")
    run = client.create_run(experiment_id)
    client.set_terminated(run.info.run_id)
    out = capsys.readouterr().out
    link = f"{on_server.url}/#/experiments/{experiment_id}/runs/{run.info.run_id}"
    assert f"View run {run.info.run_name} at: {link}\n" in out, out
    assert "workflowType" not in out
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # what train/tracking.py defaults to
    client.set_terminated(client.create_run(experiment_id).info.run_id)
    assert "View run" not in capsys.readouterr().out


@pytest.mark.slow
def test_a_sweep_names_its_objective_for_optuna_and_on_each_trial(jets_file, tmp_path, capsys):
    from mae_tracker.sweep.runner import run_sweep

    spec = {"name": "named", "experiment": "what-you-see", "method": "random", "seed": 0, "n_trials": 1,
            "metric": {"name": "val_auc", "goal": "maximize"}, "objective": "probe", "pruner": {"type": "none"},
            "parameters": {"mask_ratio": {"distribution": "uniform", "min": 0.5, "max": 0.9}},
            "fixed": {"data": str(jets_file), "epochs": 1, "batch_size": 32, "depth": 1, "probe_train_jets": 64,
                      "probe_val_jets": 64, "eval_jets": 64, "image_every": 0, "num_threads": 1},
            "downstream": {"epochs": 1, "batch_size": 32}, "promote": False}
    path = tmp_path / "named.yaml"
    path.write_text(yaml.safe_dump(spec))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    summary = run_sweep(path, storage=storage)

    study = optuna.load_study(study_name="named", storage=storage)
    assert study.metric_names == ["val_auc"]  # optuna-dashboard's axis, not "Objective 0"
    trial = study.trials[0]
    run = mlflow.MlflowClient().get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.metrics["objective_val_auc"] == pytest.approx(trial.value)
    assert run.data.metrics["val_auc"] == pytest.approx(trial.value)
    # sorted first among the trial's metrics: the compare view's first column chose the winner
    assert sorted(run.data.metrics)[0] == "objective_val_auc"
    out = capsys.readouterr().out
    parent = summary["parent_run_id"]
    assert f"/runs/{parent}?workflowType=machine_learning" in out
    assert f"[named] Optuna's view: optuna-dashboard {storage}" in out
    if shutil.which("optuna-dashboard") or (Path(sys.executable).parent / "optuna-dashboard").exists():
        assert dashboard_metric_names(storage, tmp_path) == ["val_auc"]


def dashboard_metric_names(storage: str, tmp_path: Path) -> list[str]:
    """Start optuna-dashboard (the `dashboard` extra) on a loopback port against the storage and
    read the study's objective names from its API: what its plots are labelled with."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exe = shutil.which("optuna-dashboard") or str(Path(sys.executable).parent / "optuna-dashboard")
    with (tmp_path / "dashboard.log").open("w") as log:
        proc = subprocess.Popen([exe, storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as reply:
                    studies = json.load(reply)["study_summaries"]
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "dashboard.log").read_text())
                time.sleep(0.3)
        (study,) = [s for s in studies if s["study_name"] == "named"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=5) as reply:
            detail = json.load(reply)
        return detail.get("objective_names")  # absent for an unnamed objective: "Objective 0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
