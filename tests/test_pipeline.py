"""The pipeline recipe end to end at toy size: data, sweep, long pretrain, label efficiency with the
classical baselines, results table, report; rerunning resumes (trains nothing new)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import h5py
import pytest
import yaml
from click.testing import CliRunner

from mae_tracker.pipeline.__main__ import main
from mae_tracker.pipeline.spec import PipelineSpecError, load_pipeline_spec

EXPERIMENT = "pipeline-tests"
ARMS = ["probe", "finetune", "scratch"]
BASELINES = ["observable", "gbdt", "cnn"]
FRACTIONS = [0.5, 1.0]
SEEDS = [0, 1]


def write_pipeline(tmp_path: Path, jets_file: Path, name: str = "toy-pipeline", **changes: Any) -> Path:
    sweep = {"name": f"{name}-sweep", "experiment": EXPERIMENT, "method": "random", "seed": 0, "n_trials": 2,
             "metric": {"name": "val_auc", "goal": "maximize"}, "objective": "probe", "pruner": {"type": "none"},
             "parameters": {"mask_ratio": {"distribution": "uniform", "min": 0.5, "max": 0.9},
                            "occupied_pixel_weight": {"values": [1.0, 5.0]}},
             "fixed": {"epochs": 1, "batch_size": 32, "depth": 2, "probe_train_jets": 64, "probe_val_jets": 64,
                       "eval_jets": 64, "image_every": 0, "num_threads": 1},
             "downstream": {"epochs": 1, "batch_size": 32}, "promote": False}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    pipeline = {"name": name, "data": {"file": str(jets_file)}, "sweep": "sweep.yaml",
             "pretrain": {"epochs": 2, "image_jets": 2}, "arms": ARMS, "baselines": BASELINES,
             "fractions": FRACTIONS, "seeds": SEEDS, "downstream": {"epochs": 2, "batch_size": 32},
             "baseline": {"epochs": 1, "batch_size": 32},
             "by_fraction": {0.5: {"epochs": 3, "batch_size": 16}}}
    pipeline.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def pipeline(jets_file, tmp_path_factory) -> dict[str, Any]:
    from mae_tracker.pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("pipeline")
    path = write_pipeline(tmp, jets_file)
    first = run_pipeline(path, out_dir=tmp / "report", echo=lambda line: None)
    second = run_pipeline(path, echo=lambda line: None)
    return {"first": first, "second": second, "out": tmp / "report"}


def runs_under(parent_id: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_every_step_is_nested_under_one_finished_pipeline_run(pipeline):
    result = pipeline["first"]
    client = mlflow.MlflowClient()
    parent = client.get_run(result["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "pipeline"
    nested = {run.info.run_id: run for run in runs_under(result["run_id"])}
    assert set(nested) == {result["sweep_parent_run_id"], result["pretrain_run_id"],
                           result["label_efficiency_run_id"]}
    assert all(run.info.status == "FINISHED" for run in nested.values())
    assert len(runs_under(result["sweep_parent_run_id"])) == 2  # the sweep's trials
    # the long pretraining = the sweep's fixed fields + the best trial's parameters + the pipeline's own
    sweep_best = client.get_run(result["sweep_parent_run_id"]).data
    pretrain = nested[result["pretrain_run_id"]].data.params
    assert pretrain["epochs"] == "2" and pretrain["depth"] == "2"
    assert float(pretrain["mask_ratio"]) == pytest.approx(float(sweep_best.tags["best_params.mask_ratio"]))
    assert float(pretrain["occupied_pixel_weight"]) == float(sweep_best.tags["best_params.occupied_pixel_weight"])
    assert result["encoder_uri"].startswith("runs:/" + result["pretrain_run_id"])


def test_label_efficiency_children_cover_arms_baselines_fractions_seeds(pipeline):
    result = pipeline["first"]
    children = runs_under(result["label_efficiency_run_id"])
    keys = {(r.data.tags["arm"], float(r.data.params["label_fraction"]), int(r.data.params["seed"])) for r in children}
    assert keys == {(a, f, s) for a in ARMS + BASELINES for f in FRACTIONS for s in SEEDS}
    assert all(r.info.status == "FINISHED" for r in children) and len(children) == 24
    # all on the same test jets of the same file: the arms' and the baselines' labelled sets match
    jets = {(r.data.tags["arm"], r.data.params["label_fraction"], r.data.params["seed"]): r.data.params["labelled_jets"]
            for r in children}
    for fraction in FRACTIONS:
        for seed in SEEDS:
            assert len({jets[(a, str(fraction), str(seed))] for a in ARMS + BASELINES}) == 1
    # by_fraction: 3 epochs, batch 16 at half the labels for arms and the CNN; 2 / 1 epochs at all labels
    epochs = {(r.data.tags["arm"], float(r.data.params["label_fraction"])): r.data.params["epochs"] for r in children}
    assert epochs[("finetune", 0.5)] == "3" and epochs[("finetune", 1.0)] == "2"
    assert epochs[("cnn", 0.5)] == "3" and epochs[("cnn", 1.0)] == "1"


def test_results_table_holds_mean_and_spread_of_the_children(pipeline):
    result = pipeline["first"]
    summary, table = result["summary"], result["table"]
    assert len(summary) == len(ARMS + BASELINES) * len(FRACTIONS)
    assert set(summary.seeds) == {2}
    for row in summary.itertuples():
        group = table[(table.arm == row.arm) & (table.label_fraction == row.label_fraction)]
        assert row.test_auc_mean == pytest.approx(group.test_auc.mean())
        assert row.test_auc_std == pytest.approx(group.test_auc.std(ddof=1))
        assert row.test_acc_mean == pytest.approx(group.test_acc.mean())
        assert 0.0 <= row.test_auc_mean <= 1.0 and row.wall_s_mean > 0
    logged = mlflow.artifacts.load_text(f"runs:/{result['run_id']}/pipeline_results.csv")
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(logged))[["arm", "test_auc_mean"]],
                                  summary[["arm", "test_auc_mean"]], check_exact=False)
    markdown = mlflow.artifacts.load_text(f"runs:/{result['run_id']}/pipeline_results.md")
    assert markdown.count("\n") == len(summary) + 2 and "gbdt" in markdown and " ± " in markdown
    report = (pipeline["out"] / "report.md").read_text()
    assert "Label efficiency" in report and "Classical baselines" in report and (pipeline["out"] / "report.html").exists()


def test_rerunning_the_pipeline_resumes_and_trains_nothing(pipeline):
    first, second = pipeline["first"], pipeline["second"]
    assert second["run_id"] == first["run_id"]
    assert second["pretrain_run_id"] == first["pretrain_run_id"]
    assert second["label_efficiency_run_id"] == first["label_efficiency_run_id"]
    assert second["trained"] == 0 and second["skipped"] == 24
    pd.testing.assert_frame_equal(second["table"], first["table"])
    assert len(runs_under(first["sweep_parent_run_id"])) == 2  # no new trial either


@pytest.mark.parametrize("change, message", [
    ({"fractions": [0.5, 1.5]}, "fractions[1]: must be in (0, 1]"),
    ({"by_fraction": {0.25: {"epochs": 3}}}, "by_fraction.0.25: is not one of the fractions"),
    ({"by_fraction": {0.5: {"seed": 3}}}, "by_fraction.0.5.seed: not a field a pipeline may set"),
    ({"arms": ["probe", "linear"]}, "arms: must be a list of distinct names"),
    ({"downstream": {"data": "x.h5"}}, "downstream.data: is set by the pipeline"),
    ({"pretrain": {"split_seed": 3}}, "pretrain.split_seed: is set by the pipeline"),
    ({"sweep": "missing.yaml"}, "sweep: no such sweep file"),
    ({"colour": "blue"}, "colour: unknown key"),
    ({"pretrain": {"mask_ratio": 1.5}}, "pretrain.mask_ratio: 1.5 is outside the allowed range: 0 < mask_ratio < 1"),
    ({"by_fraction": {0.5: {"dropout": 1.0}}}, "by_fraction.0.5.dropout: 1.0 is outside the allowed range"),
])
def test_a_bad_pipeline_file_is_one_line_naming_the_key(tmp_path, jets_file, change, message):
    path = write_pipeline(tmp_path, jets_file, **change)
    with pytest.raises(PipelineSpecError) as err:
        load_pipeline_spec(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    outcome = CliRunner().invoke(main, [str(path)])
    assert outcome.exit_code == 1 and message in outcome.output


def test_the_shipped_pipeline_files_are_valid():
    root = Path(__file__).resolve().parents[1] / "sweeps"
    for path in sorted(root.glob("pipeline-*.yaml")):
        if path.name.endswith("-sweep.yaml"):
            continue
        spec = load_pipeline_spec(path)
        assert spec.fractions == (0.01, 0.1, 1.0) and spec.seeds == (0, 1, 2)
        assert set(spec.arms) == {"probe", "finetune", "scratch"} and set(spec.baselines) == {"observable", "gbdt",
                                                                                              "cnn"}
        # quark/gluon: the 50,000 jets; top/QCD and e/gamma: 30,000 (what 2 CPU cores ran in a session)
        least = 50_000 if spec.data.get("task", "quark-gluon") == "quark-gluon" else 30_000
        assert spec.data.get("n_jets", 0) >= least or "file" in spec.data, path.name
    assert {p.name for p in root.glob("pipeline-*.yaml")} >= {"pipeline-qg.yaml", "pipeline-top-qcd.yaml", "pipeline-eg.yaml"}


def test_a_changed_pipeline_file_is_a_new_plan_not_a_resume(pipeline):
    from mae_tracker.pipeline.label_efficiency import same_plan

    result = pipeline["first"]
    plan = {"fractions": FRACTIONS, "seeds": SEEDS, "arms": ARMS + BASELINES,
            "overrides": {"epochs": 2, "batch_size": 32}, "baseline_overrides": {"epochs": 1, "batch_size": 32},
            "fraction_overrides": {0.5: {"epochs": 3, "batch_size": 16}}}
    assert same_plan(result["label_efficiency_run_id"], result["encoder_uri"], **plan)
    changed = {**plan, "fraction_overrides": {0.5: {"epochs": 4, "batch_size": 16}}}
    assert not same_plan(result["label_efficiency_run_id"], result["encoder_uri"], **changed)
    assert not same_plan(result["label_efficiency_run_id"], result["encoder_uri"], **{**plan, "seeds": [0]})


def test_a_pipeline_or_its_sweep_on_other_data_is_refused_before_anything_runs(pipeline, jets_file, tmp_path):
    other = tmp_path / "other.h5"  # the same jets, other bytes: another sha256
    shutil.copy(jets_file, other)
    with h5py.File(other, "a") as handle:
        handle.attrs["copied_from"] = str(jets_file)
    client = mlflow.MlflowClient()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    before = len(client.search_runs([experiment_id], max_results=5000))

    # The same pipeline on another file: it reopened the parent made on the first one.
    path = write_pipeline(tmp_path, other)
    outcome = CliRunner().invoke(main, [str(path)])
    assert outcome.exit_code == 1 and len(outcome.stderr.strip().splitlines()) == 1, outcome.output
    assert f"pipeline 'toy-pipeline' (parent run {pipeline['first']['run_id']})" in outcome.stderr
    assert str(jets_file) in outcome.stderr and str(other) in outcome.stderr and "another `name:`" in outcome.stderr
    # A renamed pipeline whose sweep file still names the sweep that ran on the first file.
    (tmp_path / "renamed").mkdir()
    path = write_pipeline(tmp_path / "renamed", other, name="renamed-pipeline")
    sweep = yaml.safe_load((tmp_path / "renamed" / "sweep.yaml").read_text())
    (tmp_path / "renamed" / "sweep.yaml").write_text(yaml.safe_dump({**sweep, "name": "toy-pipeline-sweep"}))
    outcome = CliRunner().invoke(main, [str(path)])
    assert outcome.exit_code == 1 and "study 'toy-pipeline-sweep'" in outcome.stderr and "another file" in outcome.stderr
    assert len(client.search_runs([experiment_id], max_results=5000)) == before  # nothing written
    assert client.get_run(pipeline["first"]["run_id"]).info.status == "FINISHED"
