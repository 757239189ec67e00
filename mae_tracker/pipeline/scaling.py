"""Run (or continue) a scaling study: where, if anywhere, would MAE pretraining pay off?

For every encoder size and pretraining size (the first N jets of ONE dataset's pretraining split,
via ``max_jets``), the same MAE recipe is pretrained, then probed / finetuned at small fractions of
one fixed labelled set (a label-efficiency grid); the classical baselines run once on the same
labels. All of it is nested under one parent run, found again by name when the command is rerun:

* pretraining: the parent's child of that name; finished -> kept, interrupted -> resumed from its
  checkpoint;
* each grid: the parent's label-efficiency child with the same plan (encoder, fractions, seeds,
  arms, settings) is resumed, so finished runs are kept;
* the table, the power-law fits and the figure are rebuilt from the runs every time (cheap).

Every run is tagged ``pretrain_jets`` and ``variant`` (the encoder's label; ``none`` for baselines).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import mlflow
import pandas as pd

from mae_tracker.pipeline import scaling_fit
from mae_tracker.pipeline.runner import PARENT_TAG, active_parent, dataset_path, latest_child
from mae_tracker.pipeline.scaling_spec import ScalingSpec, load_scaling_spec
from mae_tracker.signals import sigterm_as_exit
from mae_tracker.sweep.parent import closing, reopen
from mae_tracker.train import tracking
from mae_tracker.ui_links import run_where

KIND = "scaling"
STUDY_TAG = "scaling_study"
SETTINGS_TAG = "scaling_settings"  # JSON of a pretraining's settings: a changed spec is a new run
NONE = "none"  # pretrain_jets and variant of the baselines, which use no encoder
Echo = Callable[[str], None]


def _echo(line: str) -> None:
    print(line, flush=True)


def run_scaling(spec_path: str | Path, *, out_dir: str | Path | None = None, workers: int | None = None,
                progress: bool = False, echo: Echo = _echo) -> dict[str, Any]:
    """Run or continue the scaling study described by the YAML at ``spec_path``; rerun to resume.

    Returns run_id (the study's parent), data, pretrain_run_ids and grid_run_ids (keyed by
    (encoder, pretrain_jets)), baseline_run_id, rows (one per downstream run), points (mean and
    spread over seeds), fits (the power laws and crossings), trained / skipped (downstream runs
    of this call), pretrained (pretrainings run by this call) and files (written to ``out_dir``).
    """
    spec = load_scaling_spec(spec_path)
    tracking.configure_tracking()
    client = mlflow.MlflowClient()
    data_path = dataset_path(spec, workers, progress, echo)
    available = _check_sizes(spec, data_path, progress)
    parent_id = _open_parent(client, spec, str(Path(data_path).resolve()))
    echo(f"scaling {spec.name}: parent run {parent_id} in experiment {spec.experiment}; data {data_path} "
         f"({available} pretraining jets)")
    echo(f"scaling {spec.name}: view it: {run_where(parent_id)}")
    pretrained, grids, counts = {}, {}, {"trained": 0, "skipped": 0, "pretrained": 0}
    with sigterm_as_exit(), closing(parent_id):
        with active_parent(client, parent_id):
            for encoder in spec.encoders:
                for jets in spec.pretrain_jets:
                    pretrained[(encoder, jets)] = _pretrain(client, spec, encoder, jets, data_path, parent_id,
                                                            progress, counts, echo)
                    grids[(encoder, jets)] = _grid(client, spec, pretrained[(encoder, jets)]["encoder_uri"],
                                                   parent_id, encoder, jets, counts, echo)
            first = pretrained[(next(iter(spec.encoders)), spec.pretrain_jets[0])]["encoder_uri"]
            baselines = _grid(client, spec, first, parent_id, NONE, 0, counts, echo) if spec.baselines else None
        rows = _rows(grids, baselines)
        points = scaling_fit.summarize_points(rows)
        fits = scaling_fit.fit_lines(rows, c=spec.fit_c, bootstrap=spec.bootstrap, seed=spec.fit_seed)
        files = _log_results(client, spec, parent_id, points, fits, rows, pretrained, out_dir)
    echo(f"scaling {spec.name}: done; parent run {parent_id}; view it: {run_where(parent_id)}")
    echo(scaling_fit.points_markdown(points))
    echo(scaling_fit.fits_markdown(fits))
    return {"run_id": parent_id, "data": str(data_path), "rows": rows, "points": points, "fits": fits,
            "pretrain_run_ids": {k: v["run_id"] for k, v in pretrained.items()},
            "grid_run_ids": {k: v["run_id"] for k, v in grids.items()},
            "baseline_run_id": baselines["run_id"] if baselines else "", "files": files, **counts}


# --- steps -----------------------------------------------------------------------------------

def _check_sizes(spec: ScalingSpec, data_path: Path, progress: bool) -> int:
    """The largest size must fit the pretraining split (``max_jets`` would silently cap it)."""
    from mae_tracker.train.config import PretrainConfig
    from mae_tracker.train.data import prepare_data

    settings = spec.pretrain_settings(next(iter(spec.encoders)), spec.pretrain_jets[-1])
    config = PretrainConfig(**{**settings, "data": str(data_path)})
    available = len(prepare_data(config, progress=progress).splits["pretrain"])
    if spec.pretrain_jets[-1] > available:
        raise ValueError(f"{spec.path}: pretrain_jets[{len(spec.pretrain_jets) - 1}]: {spec.pretrain_jets[-1]} jets, "
                         f"but the pretraining split of {data_path} has {available}")
    return available


def _pretrain(client: mlflow.MlflowClient, spec: ScalingSpec, encoder: str, jets: int, data_path: Path,
              parent_id: str, progress: bool, counts: dict[str, int], echo: Echo) -> dict[str, Any]:
    from mae_tracker.train.config import PretrainConfig
    from mae_tracker.train.loop import checkpoint_path
    from mae_tracker.train.pretrain import pretrain

    config = PretrainConfig(**{**spec.pretrain_settings(encoder, jets), "data": str(data_path)})
    settings = json.dumps({k: v for k, v in dataclasses.asdict(config).items() if k != "data"}, sort_keys=True)
    label = f"[pretrain {encoder}, {jets:,} jets]"
    earlier = latest_child(client, parent_id, f"tags.`mlflow.runName` = '{config.run_name}'")
    if earlier is not None and earlier.info.status == "FINISHED":
        if earlier.data.tags.get(SETTINGS_TAG, settings) == settings:
            echo(f"{label} finished earlier (run {earlier.info.run_id[:8]}), kept")
            return {"run_id": earlier.info.run_id, "encoder_uri": earlier.data.tags["encoder_uri"]}
        echo(f"{label} the study file changed since run {earlier.info.run_id[:8]}: pretraining anew")
        client.set_tag(earlier.info.run_id, "superseded", "the scaling study's pretraining settings changed")
        earlier = None
    if earlier is not None and checkpoint_path(config.checkpoint_dir, earlier.info.run_id).exists():
        echo(f"{label} resuming run {earlier.info.run_id[:8]} from its last checkpoint")
        config = PretrainConfig(resume=earlier.info.run_id, checkpoint_dir=config.checkpoint_dir)
    else:
        echo(f"{label} {config.epochs} epochs")
    result = pretrain(config, progress=progress)
    counts["pretrained"] += 1
    for key, value in (("pretrain_jets", str(jets)), ("variant", encoder), ("scaling_role", "pretrain"),
                       (SETTINGS_TAG, settings)):
        client.set_tag(result["run_id"], key, value)
    echo(f"{label} run {result['run_id'][:8]}: val_probe_auc {result.get('val_probe_auc', float('nan')):.4f}")
    return result


def _grid(client: mlflow.MlflowClient, spec: ScalingSpec, encoder_uri: str, parent_id: str, encoder: str,
          jets: int, counts: dict[str, int], echo: Echo) -> dict[str, Any]:
    """One label-efficiency grid: the MAE arms from one encoder, or (encoder ``none``) the
    baselines, on the split of ``encoder_uri``'s pretraining (the same for every encoder)."""
    from mae_tracker.pipeline.label_efficiency import run_label_efficiency, same_plan
    from mae_tracker.train.config import DownstreamConfig

    baselines = encoder == NONE
    if baselines:
        from mae_tracker.baselines import BaselineConfig

        names, arms = _field_names(BaselineConfig), list(spec.baselines)
    else:
        names, arms = _field_names(DownstreamConfig), list(spec.arms)
    plan = {"fractions": list(spec.fractions), "seeds": list(spec.seeds), "arms": arms,
            "overrides": {} if baselines else dict(spec.downstream),
            "baseline_overrides": dict(spec.baseline) if baselines else {},
            "fraction_overrides": {f: {k: v for k, v in fields.items() if k in names}
                                   for f, fields in spec.by_fraction.items()}}
    resume = ""
    experiment_id = client.get_run(parent_id).info.experiment_id
    for run in client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}' AND "
                                                   "tags.kind = 'label-efficiency'",
                                  order_by=["attributes.start_time DESC"]):
        if same_plan(run.info.run_id, encoder_uri, **plan):
            resume = run.info.run_id
            break
    what = "baselines" if baselines else f"{encoder}, {jets:,} pretraining jets"
    echo(f"[grid {what}] {len(arms)} arms x {len(spec.fractions)} fractions x {len(spec.seeds)} seeds"
         + (f" (continuing run {resume[:8]})" if resume else ""))
    result = run_label_efficiency(encoder_uri, **plan, experiment=spec.experiment, resume=resume, progress=True)
    tags = {"pretrain_jets": NONE if baselines else str(jets), "variant": encoder,
            "scaling_role": "baselines" if baselines else "grid"}
    for run_id in [result["run_id"], *result["table"].run_id]:
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    counts["trained"] += result["trained"]
    counts["skipped"] += result["skipped"]
    return result


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _rows(grids: dict[tuple[str, int], dict[str, Any]], baselines: dict[str, Any] | None) -> pd.DataFrame:
    frames = [result["table"].assign(encoder=encoder, pretrain_jets=jets) for (encoder, jets), result in grids.items()]
    if baselines is not None:
        frames.append(baselines["table"].assign(encoder="-", pretrain_jets=0))
    return pd.concat(frames, ignore_index=True)


def _log_results(client: mlflow.MlflowClient, spec: ScalingSpec, parent_id: str, points: pd.DataFrame,
                 fits: pd.DataFrame, rows: pd.DataFrame, pretrained: dict[tuple[str, int], dict[str, Any]],
                 out_dir: str | Path | None) -> list[str]:
    """scaling_points.csv, scaling_fits.csv, scaling_results.md and scaling.png on the parent (and in out_dir)."""
    from mae_tracker.pipeline.scaling_figure import save_scaling_figure

    sizes = {}
    for (encoder, _), result in pretrained.items():
        params = client.get_run(result["run_id"]).data.params
        sizes[encoder] = int(params.get("encoder_params", 0))
    text = (f"# Scaling study {spec.name}\n\nTest AUC, mean ± sample standard deviation over seeds, with the runs "
            f"(first 8 characters of each id):\n\n{scaling_fit.points_markdown(points)}\n\n"
            f"{scaling_fit.fits_markdown(fits)}\n")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        points.to_csv(folder / "scaling_points.csv", index=False)
        fits.to_csv(folder / "scaling_fits.csv", index=False)
        (folder / "scaling_results.md").write_text(text)
        save_scaling_figure(points, fits, rows, folder / "scaling.png", encoder_params=sizes, title=spec.name)
        files = [folder / name for name in ("scaling_points.csv", "scaling_fits.csv", "scaling_results.md",
                                            "scaling.png")]
        for path in files:
            client.log_artifact(parent_id, str(path))
        return [str(path) for path in files] if out_dir is not None else []


# --- the study's parent run -----------------------------------------------------------------------

def _open_parent(client: mlflow.MlflowClient, spec: ScalingSpec, data: str) -> str:
    """The study's parent run from an earlier call (found by name: rerun = resume), else created.
    One made on other data is refused in one line, before anything runs."""
    experiment_id = tracking.ensure_experiment(spec.experiment)
    found = client.search_runs([experiment_id], f"tags.{STUDY_TAG} = '{spec.name}'", max_results=1,
                               order_by=["attributes.start_time DESC"])
    if found:
        run = found[0]
        if run.data.params.get("data", data) != data:
            raise ValueError(f"{spec.path}: scaling study {spec.name!r} (parent run {run.info.run_id}) ran on "
                             f"{run.data.params['data']}, not {data}; give {spec.path.name} another `name:` to "
                             "start a new study for this data")
        reopen(client, run.info.run_id)
        return run.info.run_id
    run = client.create_run(experiment_id, run_name=spec.name,
                            tags={STUDY_TAG: spec.name, "kind": KIND, "arm": KIND,
                                  "mlflow.note.content": spec.description or f"scaling study {spec.name}"})
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in {
        "data": data, "encoders": json.dumps(spec.encoders, sort_keys=True),
        "pretrain_jets": ",".join(str(n) for n in spec.pretrain_jets), "arms": ",".join(spec.arms),
        "baselines": ",".join(spec.baselines), "fractions": ",".join(f"{f:g}" for f in spec.fractions),
        "seeds": ",".join(str(s) for s in spec.seeds), "fit_c": spec.fit_c}.items()])
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "scaling.yaml").write_text(spec.text)
        client.log_artifact(run.info.run_id, str(Path(tmp) / "scaling.yaml"))
    return run.info.run_id


__all__ = ["run_scaling", "KIND", "STUDY_TAG"]
