"""The scaling study end to end at toy size (one parent; pretrainings and grids nested under it; a
rerun trains nothing; table and figure logged), the power-law fit on synthetic data, and a bad
study file as one line."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from mae_tracker.pipeline.scaling_fit import crossing_jets, fit_lines, fit_power_law
from mae_tracker.pipeline.scaling_spec import ScalingSpecError, load_scaling_spec

EXPERIMENT = "scaling-tests"
SIZES = [128, 400]
ARMS = ["probe", "finetune"]
BASELINES = ["cnn", "gbdt"]
FRACTIONS = [0.5, 1.0]
SEEDS = [0, 1]


def write_study(tmp_path: Path, jets_file: Path, name: str = "toy-scaling", **changes: Any) -> Path:
    study = {"name": name, "experiment": EXPERIMENT, "data": {"file": str(jets_file)}, "pretrain_jets": SIZES,
             "encoders": {"vit-nano": {"variant": "vit-nano", "depth": 1}},
             "pretrain": {"epochs": 1, "batch_size": 32, "eval_jets": 64, "image_every": 0, "image_jets": 2,
                          "probe_train_jets": 0, "probe_val_jets": 0, "num_threads": 1,
                          "pixel_transform": "log1p", "pixel_scaling": "channel"},
             "arms": ARMS, "baselines": BASELINES, "fractions": FRACTIONS, "seeds": SEEDS,
             "downstream": {"epochs": 1, "batch_size": 32, "num_threads": 1},
             "baseline": {"epochs": 1, "batch_size": 32, "num_threads": 1, "gbdt_max_iter": 20},
             "by_fraction": {0.5: {"batch_size": 16}}, "fit": {"bootstrap": 20}}
    study.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def study(jets_file, tmp_path_factory) -> dict[str, Any]:
    from mae_tracker.cli import main
    from mae_tracker.pipeline.scaling import STUDY_TAG, run_scaling

    tmp = tmp_path_factory.mktemp("scaling")
    path = write_study(tmp, jets_file)
    outcome = CliRunner().invoke(main, ["scaling", str(path), "--out", str(tmp / "out"), "--no-progress"])
    assert outcome.exit_code == 0, outcome.output
    client = mlflow.MlflowClient()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parents = client.search_runs([experiment_id], f"tags.{STUDY_TAG} = 'toy-scaling'")
    second = run_scaling(path, echo=lambda line: None)
    return {"parents": parents, "second": second, "out": tmp / "out", "output": outcome.output}


def children(parent_id: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.mark.slow
def test_one_parent_holds_every_pretraining_and_grid_tagged_by_size_and_variant(study):
    assert len(study["parents"]) == 1
    parent = study["parents"][0]
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "scaling"
    nested = children(parent.info.run_id)
    pretrains = [r for r in nested if r.data.tags.get("scaling_role") == "pretrain"]
    grids = [r for r in nested if r.data.tags.get("scaling_role") == "grid"]
    baselines = [r for r in nested if r.data.tags.get("scaling_role") == "baselines"]
    assert len(nested) == len(SIZES) * 2 + 1 and len(baselines) == 1
    assert sorted(int(r.data.tags["pretrain_jets"]) for r in pretrains) == SIZES
    assert sorted(int(r.data.params["max_jets"]) for r in pretrains) == SIZES
    assert {r.data.tags["variant"] for r in pretrains + grids} == {"vit-nano"}
    for grid in grids:
        runs = children(grid.info.run_id)
        assert len(runs) == len(ARMS) * len(FRACTIONS) * len(SEEDS)
        assert {r.data.tags["arm"] for r in runs} == set(ARMS)
        assert {r.data.tags["pretrain_jets"] for r in runs} == {grid.data.tags["pretrain_jets"]}
        assert all(r.info.status == "FINISHED" and r.data.tags["variant"] == "vit-nano" for r in runs)
    runs = children(baselines[0].info.run_id)
    assert {r.data.tags["arm"] for r in runs} == set(BASELINES) and len(runs) == 8
    assert {(r.data.tags["pretrain_jets"], r.data.tags["variant"]) for r in runs} == {("none", "none")}


@pytest.mark.slow
def test_rerunning_resumes_and_trains_nothing(study):
    second = study["second"]
    assert second["run_id"] == study["parents"][0].info.run_id
    assert second["trained"] == 0 and second["pretrained"] == 0
    assert second["skipped"] == (len(SIZES) * len(ARMS) + len(BASELINES)) * len(FRACTIONS) * len(SEEDS)
    assert len(children(second["run_id"])) == len(SIZES) * 2 + 1  # nothing new under the parent


@pytest.mark.slow
def test_table_fits_and_figure_are_logged_on_the_parent_and_written_to_out(study):
    second, parent_id = study["second"], study["second"]["run_id"]
    points, rows = second["points"], second["rows"]
    assert len(points) == (len(SIZES) * len(ARMS) + len(BASELINES)) * len(FRACTIONS) and set(points.seeds) == {2}
    for row in points.itertuples():
        group = rows[(rows.encoder == row.encoder) & (rows.pretrain_jets == row.pretrain_jets)
                     & (rows.arm == row.arm) & (rows.label_fraction == row.label_fraction)]
        assert row.test_auc_mean == pytest.approx(group.test_auc.mean())
        assert row.test_auc_std == pytest.approx(group.test_auc.std(ddof=1))
    logged = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(f"runs:/{parent_id}/scaling_points.csv")))
    assert list(logged.test_auc_mean.round(6)) == list(points.test_auc_mean.round(6))
    fits = second["fits"]
    assert len(fits) == len(ARMS) * len(FRACTIONS)
    assert set(fits.c_fit) == {"fixed"} and set(fits.dof) == {0}  # 2 sizes: c held fixed, a and b exactly determined
    assert set(fits.baseline) <= set(BASELINES)
    markdown = mlflow.artifacts.load_text(f"runs:/{parent_id}/scaling_results.md")
    assert "extrapolation" in markdown and " ± " in markdown and "(fixed)" in markdown
    assert all(r[:8] in markdown for r in rows.run_id)
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent_id)}
    assert {"scaling.png", "scaling_fits.csv", "scaling_points.csv", "scaling_results.md", "scaling.yaml"} <= artifacts
    assert (study["out"] / "scaling.png").stat().st_size > 10_000
    assert "scaling toy-scaling: done" in study["output"]


def test_the_fit_recovers_a_known_power_law_and_its_crossing():
    a, b, c = 0.85, 0.6, 0.4
    jets = np.repeat([1e4, 2e4, 4e4, 8e4, 1.6e5, 3.2e5], 3)
    auc = a - b * jets ** -c + np.random.default_rng(0).normal(0, 1e-5, len(jets))
    fit = fit_power_law(jets, auc)
    assert not fit.c_fixed and fit.dof == 3
    assert (fit.a, fit.b, fit.c) == (pytest.approx(a, abs=1e-3), pytest.approx(b, rel=0.05), pytest.approx(c, abs=0.01))
    assert crossing_jets(fit.a, fit.b, fit.c, 0.84) == pytest.approx((b / (a - 0.84)) ** (1 / c), rel=0.05)
    assert crossing_jets(0.83, 0.6, 0.4, 0.84) == float("inf")  # the asymptote below the baseline: never
    # three sizes: the exponent is held fixed and the table says so
    fixed = fit_power_law(jets[:9], auc[:9], c=0.4)
    assert fixed.c_fixed and fixed.c == 0.4 and fixed.dof == 1 and fixed.a == pytest.approx(a, abs=1e-4)


def test_fit_lines_solve_the_crossing_with_the_best_baseline_or_say_never():
    a, b, c = 0.85, 0.6, 0.5
    rows = [{"encoder": "vit-nano", "pretrain_jets": n, "arm": "finetune", "label_fraction": 0.1, "labelled_jets": 150,
             "seed": s, "test_auc": a - b * n ** -c + 1e-4 * (s - 1), "run_id": f"run{n}{s}"}
            for n in (10_000, 40_000, 160_000) for s in range(3)]
    rows += [{"encoder": "vit-nano", "pretrain_jets": n, "arm": "probe", "label_fraction": 0.1, "labelled_jets": 150,
              "seed": s, "test_auc": 0.80 - 0.5 * n ** -c + 1e-4 * s, "run_id": f"p{n}{s}"}
             for n in (10_000, 40_000, 160_000) for s in range(3)]
    rows += [{"encoder": "-", "pretrain_jets": 0, "arm": arm, "label_fraction": 0.1, "labelled_jets": 150, "seed": s,
              "test_auc": level + 1e-4 * s, "run_id": f"{arm}{s}"}
             for arm, level in (("gbdt", 0.849), ("cnn", 0.83)) for s in range(3)]
    fits = fit_lines(pd.DataFrame(rows), c=0.5, bootstrap=50).set_index("arm")
    finetune, probe = fits.loc["finetune"], fits.loc["probe"]
    assert finetune.baseline == "gbdt" and finetune.c_fit == "fixed" and finetune.dof == 1
    expected = (b / (a - 0.8491)) ** (1 / c)  # (0.6 / 0.0009) squared: ~444,000 jets, beyond the 160,000 measured
    assert finetune.crossing_jets == pytest.approx(expected, rel=0.02)
    assert finetune.crossing_lo <= finetune.crossing_jets <= finetune.crossing_hi
    assert finetune.verdict.startswith("extrapolation")
    assert probe.crossing_jets == float("inf") and probe.verdict.startswith("never") and probe.never_share == 1.0


@pytest.mark.parametrize("change, message", [
    ({"colour": "blue"}, "colour: unknown key"),
    ({"pretrain_jets": [400, 128]}, "pretrain_jets: must be at least two increasing sizes"),
    ({"encoders": {"big": {"variant": "vit-huge"}}}, "encoders.big.variant: unknown variant 'vit-huge'"),
    ({"encoders": {"big": {"variant": "vit-nano", "max_jets": 5}}},
     "encoders.big.max_jets: is set by the scaling study"),
    ({"pretrain": {"split_seed": 3}}, "pretrain.split_seed: is set by the scaling study"),
    ({"split": {"pretrain_fraction": 0.9}}, "split: the fractions sum to 1.4 > 1"),
    ({"data": {"task": "quark-gluon", "n_jets": 500}}, "pretrain_jets[1]: 400 jets, but data.n_jets 500"),
    ({"fractions": [0.5, 1.5]}, "fractions[1]: must be in (0, 1]"),
    ({"arms": ["probe", "scratch", "linear"]}, "arms: must be a list of distinct names"),
    ({"fit": {"c": 0}}, "fit.c: must be in (0, 5]"),
])
def test_a_bad_study_file_is_one_line_naming_the_key(tmp_path, jets_file, change, message):
    from mae_tracker.cli import main

    path = write_study(tmp_path, jets_file, **change)
    with pytest.raises(ScalingSpecError) as err:
        load_scaling_spec(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    outcome = CliRunner().invoke(main, ["scaling", str(path)])
    assert outcome.exit_code == 1 and message in outcome.output


def test_the_shipped_scaling_study_is_valid():
    spec = load_scaling_spec(Path(__file__).resolve().parents[1] / "sweeps" / "scaling-qg.yaml")
    assert spec.pretrain_jets[-1] / spec.pretrain_jets[0] >= 16 and len(spec.pretrain_jets) >= 3
    assert len(spec.encoders) >= 2 and set(spec.arms) == {"probe", "finetune"}
    assert set(spec.baselines) == {"cnn", "gbdt"}
    assert spec.fractions == (0.01, 0.1) and spec.seeds == (0, 1, 2) and spec.data["task"] == "quark-gluon"


@pytest.mark.slow
def test_the_same_study_on_other_data_is_refused_before_anything_runs(study, jets_file, tmp_path):
    import shutil

    from mae_tracker.cli import main

    other = tmp_path / "other.h5"
    shutil.copy(jets_file, other)
    client = mlflow.MlflowClient()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    before = len(client.search_runs([experiment_id], max_results=5000))
    outcome = CliRunner().invoke(main, ["scaling", str(write_study(tmp_path, other))])
    assert outcome.exit_code == 1 and len(outcome.stderr.strip().splitlines()) == 1, outcome.output
    assert f"(parent run {study['second']['run_id']}) ran on" in outcome.stderr and "another `name:`" in outcome.stderr
    assert len(client.search_runs([experiment_id], max_results=5000)) == before
    assert client.get_run(study["second"]["run_id"]).info.status == "FINISHED"
