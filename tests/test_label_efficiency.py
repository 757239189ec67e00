"""Label-efficiency grid: one parent, a child per (arm, fraction, seed), resumable."""

from __future__ import annotations

import io
import json

import mlflow
import pandas as pd
import pytest

from label_efficiency_grid import ARMS, EXPERIMENT, FRACTIONS, SEEDS, grid, pretrained
from mae_tracker.pipeline.label_efficiency import run_label_efficiency


def children(parent_id: str) -> list:
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def logged_csv(run_id: str) -> pd.DataFrame:
    text = mlflow.artifacts.load_text(f"runs:/{run_id}/label_efficiency.csv")
    return pd.read_csv(io.StringIO(text))


@pytest.fixture(scope="module")
def result(jets_file):
    return grid(jets_file)


def test_parent_has_one_finished_child_per_arm_fraction_seed(result, jets_file):
    client = mlflow.MlflowClient()
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["kind"] == "label-efficiency"
    assert parent.data.params["encoder_uri"] == pretrained(jets_file)["encoder_uri"]
    assert json.loads(parent.data.params["fractions"]) == list(FRACTIONS)
    assert json.loads(parent.data.params["seeds"]) == list(SEEDS)
    runs = children(result["run_id"])
    assert len(runs) == len(ARMS) * len(FRACTIONS) * len(SEEDS) == 12
    assert all(run.info.status == "FINISHED" for run in runs)
    keys = {(r.data.tags["arm"], float(r.data.params["label_fraction"]), int(r.data.params["seed"])) for r in runs}
    assert keys == {(a, f, s) for a in ARMS for f in FRACTIONS for s in SEEDS}
    # the split of the pretrain run: 400 train jets -> 200 and 400 labelled
    assert {int(r.data.params["labelled_jets"]) for r in runs} == {200, 400}
    assert {r.data.params["data"] for r in runs} == {str(jets_file)}
    assert result["trained"] == 12 and result["skipped"] == 0


def test_csv_and_figure_hold_the_childrens_metrics(result):
    table = logged_csv(result["run_id"])
    assert list(table.columns) == ["arm", "label_fraction", "labelled_jets", "seed", "test_auc", "test_acc", "run_id"]
    assert len(table) == 12
    for row in table.itertuples():
        run = mlflow.get_run(row.run_id)
        assert run.data.tags["mlflow.parentRunId"] == result["run_id"]
        assert row.test_auc == pytest.approx(run.data.metrics["test_auc"], abs=1e-12)
        assert row.test_acc == pytest.approx(run.data.metrics["test_acc"], abs=1e-12)
        assert row.arm == run.data.tags["arm"] and row.labelled_jets == int(run.data.params["labelled_jets"])
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(result["run_id"])}
    assert {"label_efficiency.csv", "label_efficiency.png"} <= names


def test_resume_skips_finished_children_and_reruns_a_failed_one(result):
    parent_id = result["run_id"]
    before = {r.info.run_id for r in children(parent_id)}
    again = run_label_efficiency(resume=parent_id, progress=False)
    assert again["trained"] == 0 and again["skipped"] == 12
    assert {r.info.run_id for r in children(parent_id)} == before

    client = mlflow.MlflowClient()
    victim = logged_csv(parent_id).iloc[0]
    client.set_terminated(victim.run_id, "FAILED")
    third = run_label_efficiency(resume=parent_id, progress=False)
    assert third["trained"] == 1 and third["skipped"] == 11
    runs = children(parent_id)
    assert len(runs) == 13 and client.get_run(victim.run_id).info.status == "FAILED"
    new = {r.info.run_id for r in runs} - before
    assert len(new) == 1
    table = logged_csv(parent_id)
    assert len(table) == 12 and victim.run_id not in set(table.run_id) and new <= set(table.run_id)
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_resume_with_a_different_plan_is_refused(result):
    with pytest.raises(ValueError, match="fractions"):
        run_label_efficiency(resume=result["run_id"], fractions=(0.1,), progress=False)


def test_fraction_below_one_batch_fails_before_any_run(jets_file):
    encoder_uri = pretrained(jets_file)["encoder_uri"]
    client = mlflow.MlflowClient()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    count = len(client.search_runs([experiment_id], max_results=1000))
    with pytest.raises(ValueError, match=r"0\.01 gives 4 labelled jets.*one batch of 32.*batch_size of at most 4"):
        run_label_efficiency(encoder_uri, fractions=(0.01, 1.0), seeds=(0,), overrides={"batch_size": 32},
                             experiment=EXPERIMENT, progress=False)
    assert len(client.search_runs([experiment_id], max_results=1000)) == count
    assert client.get_experiment_by_name("never-created") is None
    with pytest.raises(ValueError, match="unknown fields in overrides: \\['epoch'\\]"):
        run_label_efficiency(encoder_uri, overrides={"epoch": 2}, experiment="never-created", progress=False)
    with pytest.raises(ValueError, match="may not set \\['seed'\\]"):
        run_label_efficiency(encoder_uri, overrides={"seed": 2}, experiment="never-created", progress=False)
    with pytest.raises(ValueError):
        run_label_efficiency(encoder_uri, fractions=(0.01,), experiment="never-created", progress=False)
    assert client.get_experiment_by_name("never-created") is None


def test_a_failing_child_fails_the_parent_and_names_the_resume_id(jets_file):
    from mae_tracker.train.loop import TrainingFailed

    encoder_uri = pretrained(jets_file)["encoder_uri"]
    with pytest.raises(TrainingFailed, match=r"1 of 1 label-efficiency runs failed \(rerun with resume=(\w+)"):
        # no such device: the child run starts, then fails moving the model
        run_label_efficiency(encoder_uri, fractions=(1.0,), seeds=(0,), arms=("probe",),
                             overrides={"device": "cuda:7"}, experiment="test-le-failing", progress=False)
    client = mlflow.MlflowClient()
    experiment_id = client.get_experiment_by_name("test-le-failing").experiment_id
    (parent,) = client.search_runs([experiment_id], "tags.kind = 'label-efficiency'")
    assert parent.info.status == "FAILED" and parent.info.run_id in parent.data.tags["end_reason"]
    (child,) = children(parent.info.run_id)
    assert child.info.status == "FAILED"
