"""A team's setup end to end: MLflow server on PostgreSQL with proxied artifacts, a sweep whose
study lives in the same PostgreSQL, driven by processes started separately, then promotion,
label efficiency and the report, all unchanged against the server; and a worker SIGKILLed
mid-trial; and several processes opening one new study database at the same moment."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

pytest.register_assert_rewrite("fixtures_team")
from fixtures_team import (DB_PASSWORD, TEAM_EXPERIMENT, client_env, popen, study_ready, wait_for,
                           write_team_spec)

from mae_tracker.sweep.storage import make_storage

pytest_plugins = ["fixtures_team"]


def children(parent_id: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def all_runs() -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, max_results=5000)


@pytest.mark.slow
def test_pretrain_sweep_promote_label_efficiency_report_through_the_server(team_day, on_server, postgres, tmp_path):
    client = mlflow.MlflowClient()
    print(f"\nteam day timings (s): {team_day.seconds}")

    # Pretrain: artifacts went through the server into its artifact folder.
    run = client.get_run(team_day.pretrain_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    stored = {p.relative_to(on_server.artifacts).as_posix() for p in on_server.artifacts.rglob("*") if p.is_file()}
    assert any(p.startswith(f"{run.info.experiment_id}/{run.info.run_id}/artifacts/reconstructions/")
               and p.endswith(".png") for p in stored), sorted(stored)[:20]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"

    # The sweep: the study in PostgreSQL has exactly the requested trials, distinct and finished.
    study = optuna.load_study(study_name=team_day.study, storage=team_day.storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert len({t.params["mask_ratio"] for t in study.trials}) == 2
    assert postgres.query("optuna", "SELECT count(*) FROM trials")[0][0] == 2  # really in PostgreSQL
    # Both processes took part: each printed the line of a trial it ran.
    lines = [line for out in (team_day.main_out, team_day.worker_out) for line in out.splitlines()
             if line.startswith("[team] trial ")]
    assert len(lines) == 2, team_day.main_out[-2000:] + team_day.worker_out[-2000:]
    assert any(line.startswith("[team] trial ") for line in team_day.worker_out.splitlines()), team_day.worker_out

    # One parent; each trial's run under it, once; each trial's arms under the trial run.
    parents = client.search_runs([experiment.experiment_id], "tags.sweep_study = 'team'")
    assert [p.info.run_id for p in parents] == [team_day.parent_run_id]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["best_trial"] in ("0", "1")
    assert DB_PASSWORD not in parent.data.tags["sweep_storage"] and ":***@" in parent.data.tags["sweep_storage"]
    trial_runs = children(parent.info.run_id)
    assert sorted(r.info.run_name for r in trial_runs) == ["trial-0", "trial-1"]
    for trial in study.trials:
        (trial_run,) = [r for r in trial_runs if r.info.run_name == f"trial-{trial.number}"]
        assert trial.user_attrs["mlflow_run_id"] == trial_run.info.run_id
        assert trial_run.info.status == "FINISHED"
        assert trial_run.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert {r.info.run_name for r in children(trial_run.info.run_id)} == {
            f"trial-{trial.number}-pretrain", f"trial-{trial.number}-probe"}
    for name in ("trials.csv", "sweep.yaml"):
        assert name in {a.path for a in client.list_artifacts(parent.info.run_id)}

    # Promotion: registered on the server with an alias.
    promotion = team_day.promotion
    registered = client.get_registered_model(promotion.registered_model)
    assert registered.aliases.get("champion") == promotion.version

    # Label efficiency from the registered champion, unchanged against the server.
    from mae_tracker.pipeline.label_efficiency import run_label_efficiency

    study_result = run_label_efficiency(f"models:/{promotion.registered_model}@champion", fractions=[1.0],
                                        seeds=[0], arms=["probe"], overrides={"epochs": 1, "batch_size": 32},
                                        experiment=TEAM_EXPERIMENT, progress=False)
    le_parent = client.get_run(study_result["run_id"])
    assert le_parent.info.status == "FINISHED" and le_parent.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert len(study_result["table"]) == 1

    # The report of the sweep, logged to its parent run through the server.
    from mae_tracker.report import build_report

    paths = build_report(team_day.parent_run_id, tmp_path / "report")
    assert paths.markdown.exists() and paths.logged_to == team_day.parent_run_id
    assert "report" in {a.path for a in client.list_artifacts(team_day.parent_run_id)}

    # No password anywhere: params, tags, the processes' output, the server's log.
    for logged in all_runs():
        values = list(logged.data.params.values()) + list(logged.data.tags.values())
        assert not [v for v in values if DB_PASSWORD in v], logged.info.run_id
    assert DB_PASSWORD not in team_day.main_out + team_day.worker_out
    assert DB_PASSWORD not in on_server.log.read_text()


@pytest.mark.slow
def test_a_sigkilled_worker_fails_its_trial_and_the_others_finish_the_study(
        on_server, postgres, jets_file, tmp_path):
    """Process A starts the study; B joins as a worker and is SIGKILLed mid-trial; C joins after
    B's heartbeat went stale. B's trial ends FAIL (its MLflow runs FAILED), its parameters are
    retried, and the study reaches its 2 finished trials without B."""
    storage = postgres.create_database("optuna_kill")
    spec = write_team_spec(tmp_path / "kill.yaml", jets_file, "kill",
                           pruner={"type": "threshold", "lower": 1.1})  # prune after epoch 0: cheap trials
    env = client_env(on_server.url)
    args = ["-m", "mae_tracker.sweep", str(spec), "--storage", storage]
    procs: list[subprocess.Popen] = []
    try:
        a = popen(args, env, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(a)
        wait_for(lambda: study_ready(storage, "kill") or a.poll() is not None, 240, "the study")
        b = popen(args + ["--worker"], env, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(b)

        def b_running() -> int | None:
            study = optuna.load_study(study_name="kill", storage=storage)
            mine = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if "mlflow_run_id" in t.user_attrs
                    and t.number >= 1]  # A took trial 0 first
            return mine[0].number if mine else None

        victim = wait_for(lambda: b_running() if b.poll() is None else -1, 240, "the worker's trial")
        assert victim != -1, "the worker exited before it started a trial"
        os.killpg(b.pid, signal.SIGKILL)
        b.wait(timeout=30)
        time.sleep(4)  # > grace period (3 s): B's heartbeat is stale now
        c = popen(args + ["--worker"], env, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(c)
        c_out, _ = c.communicate(timeout=400)
        a_out, _ = a.communicate(timeout=400)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert a.returncode == 0, a_out[-3000:]
    assert c.returncode == 0, c_out[-3000:]

    study = optuna.load_study(study_name="kill", storage=storage)
    dead = study.trials[victim]
    assert dead.state == TrialState.FAIL
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 2 and not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim]
    assert len(retried) == 1 and retried[0].params == dead.params and retried[0] in finished

    client = mlflow.MlflowClient()
    dead_run = client.get_run(dead.user_attrs["mlflow_run_id"])
    assert dead_run.info.status == "FAILED" and "heartbeat" in dead_run.data.tags["end_reason"]
    assert all(r.info.status == "FAILED" for r in children(dead_run.info.run_id))  # its arm run too
    parent_id = dead.user_attrs.get("mlflow_parent_run_id") or client.get_run(
        dead_run.info.run_id).data.tags["mlflow.parentRunId"]
    names = [r.info.run_name for r in children(parent_id)]
    assert len(names) == len(set(names)) == len(study.trials)  # one run per trial, no duplicates


def _open_new_storages(urls: list[str], barrier: Any, results: Any) -> None:
    """One of several processes that open the same new study databases at the same moment."""
    for url in urls:
        barrier.wait()
        try:
            make_storage(url, heartbeat_interval=1, grace_period=3, max_retry=0)
            results.put("ok")
        except Exception as err:  # noqa: BLE001 - reported to the test
            results.put(f"{type(err).__name__}: {str(err)[:200]}")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_opening_a_new_study_database_together_all_get_it(backend, tmp_path: Path, request):
    # Optuna creates the schema without a lock. Without make_storage's retry, about half of
    # these rounds failed a process on "table studies already exists" or on the version row.
    rounds = 6
    if backend == "sqlite":
        urls = [f"sqlite:///{tmp_path / f'round{i}.db'}" for i in range(rounds)]
    else:
        postgres = request.getfixturevalue("postgres")
        urls = [postgres.create_database(f"optuna_race_{i}") for i in range(rounds)]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    workers = [context.Process(target=_open_new_storages, args=(urls, barrier, results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        outcomes = [results.get(timeout=120) for _ in range(3 * rounds)]
    finally:
        for worker in workers:
            worker.join(timeout=30)
    assert outcomes == ["ok"] * len(outcomes)
    for url in urls:
        assert optuna.study.get_all_study_summaries(url) == []  # a complete, usable schema


def _tag_a_parent_together(url: str, run_id: str, keys: list[str], barrier: Any, results: Any, plain: bool) -> None:
    """One finishing sweep worker: tag the parent run with each new key at the same moment as the others."""
    import mlflow

    from mae_tracker.sweep.parent import set_parent_tag

    client = mlflow.MlflowClient(url)
    for key in keys:
        barrier.wait(timeout=60)
        try:
            if plain:
                client.set_tag(run_id, key, str(os.getpid()))
            else:
                set_parent_tag(client, run_id, key, str(os.getpid()))
            results.put("ok")
        except Exception as err:  # noqa: BLE001 - reported to the test
            results.put(f"{type(err).__name__}: {str(err)[:120]}")


def _race_tags(tmp_path: Path, plain: bool, rounds: int = 12) -> list[str]:
    import mlflow

    url = f"sqlite:///{tmp_path / ('plain' if plain else 'retried')}.db"
    client = mlflow.MlflowClient(url)
    run_id = client.create_run(client.create_experiment("race")).info.run_id
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    keys = [f"sweep_status_{i}" for i in range(rounds)]
    workers = [context.Process(target=_tag_a_parent_together, args=(url, run_id, keys, barrier, results, plain))
               for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        return [results.get(timeout=120) for _ in range(3 * rounds)]
    finally:
        for worker in workers:
            worker.join(timeout=30)


def test_workers_tagging_the_sweep_parent_together_all_succeed(tmp_path: Path):
    # Every worker that ends a sweep tags its parent run (sweep_status, best_*): a new tag set by two
    # processes at once is inserted twice and the second insert fails. CI caught it on 2026-12-07
    # ("UNIQUE constraint failed: tags.key, tags.run_uuid"); set_parent_tag retries as an update. Control:
    # _race_tags(..., plain=True) with client.set_tag failed 4 of 36 times here.
    assert _race_tags(tmp_path, plain=False) == ["ok"] * 36
