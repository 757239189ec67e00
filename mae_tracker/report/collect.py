"""Read the runs a report (or a label-efficiency grid) is made of from MLflow into pandas.

One row per arm run (tag ``arm``): its status, params and final metrics, plus the model and
mask ratio of the pretrain run its encoder came from (joined via the ``pretrain_run_id`` tag).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Run

from mae_tracker.baselines.config import BASELINES
from mae_tracker.models.variants import VARIANTS
from mae_tracker.train.config import ARMS

PARENT_TAG = "mlflow.parentRunId"
ALL_ARMS = (*ARMS, *BASELINES)  # a baseline run is tagged arm=<its kind>
METRICS = ("test_auc", "test_acc", "test_loss", "best_val_auc", "best_val_acc", "val_auc",
           "train_eval_loss", "val_probe_auc", "recon_total_rel_error")
PARAMS = ("variant", "depth", "embed_dim", "patch_size", "mask_ratio", "label_fraction", "labelled_jets",
          "seed", "epochs", "lr", "split_seed")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Source:
    """What a report is about: an experiment, or a parent run and everything nested under it."""

    kind: str  # "experiment" | "sweep" | "label-efficiency" | "parent"
    experiment_id: str
    name: str
    parent_run_id: str = ""
    label_efficiency_parents: list[str] = field(default_factory=list)


def short(run_id: str) -> str:
    return run_id[:8]


def resolve_source(client: mlflow.MlflowClient, source: str) -> Source:
    """``source`` is an experiment name, or the id of a sweep / label-efficiency / other parent run."""
    if _RUN_ID.match(source):
        try:
            run = client.get_run(source)
        except Exception:  # MLflow raises several types for an unknown run id
            run = None
        if run is not None:
            tags = run.data.tags
            kind = ("sweep" if tags.get("sweep_study") else
                    "label-efficiency" if tags.get("kind") == "label-efficiency" else "parent")
            if kind == "parent" and not _children(client, run.info.experiment_id, source):
                raise ValueError(f"run {source} has no child runs: give an experiment name, a sweep "
                                 "parent or a label-efficiency parent run id")
            return Source(kind, run.info.experiment_id, run.info.run_name or source, source,
                          [source] if kind == "label-efficiency" else [])
    experiment = client.get_experiment_by_name(source)
    if experiment is None:
        raise ValueError(f"{source!r} is neither an MLflow experiment name nor a run id in "
                         f"{mlflow.get_tracking_uri()}")
    parents = [run.info.run_id for run in _search(client, experiment.experiment_id,
                                                   "tags.kind = 'label-efficiency' AND attributes.status = 'FINISHED'")]
    return Source("experiment", experiment.experiment_id, source, "", parents)


def _search(client: mlflow.MlflowClient, experiment_id: str, filter_string: str = "") -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _children(client: mlflow.MlflowClient, experiment_id: str, parent_id: str) -> list[Run]:
    return _search(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_id}'")


def descendants(client: mlflow.MlflowClient, experiment_id: str, parent_id: str) -> list[Run]:
    """Every run nested (at any depth) under ``parent_id``: sweep -> trial -> arm runs."""
    found: list[Run] = []
    frontier = [parent_id]
    while frontier:
        level = [run for pid in frontier for run in _children(client, experiment_id, pid)]
        found.extend(level)
        frontier = [run.info.run_id for run in level]
    return found


def source_runs(client: mlflow.MlflowClient, source: Source) -> list[Run]:
    """The arm runs of the source, plus the pretrain runs their encoders came from."""
    if source.parent_run_id:
        runs = descendants(client, source.experiment_id, source.parent_run_id)
    else:
        runs = _search(client, source.experiment_id)
    runs = [run for run in runs if run.data.tags.get("arm") in ALL_ARMS]
    have = {run.info.run_id for run in runs}
    for pid in sorted({run.data.tags.get("pretrain_run_id", "") for run in runs} - have - {""}):
        try:
            runs.append(client.get_run(pid))
        except Exception:  # deleted or in another store: the join just stays empty
            continue
    return runs


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per arm run; downstream rows get ``model``/``mask_ratio`` from their pretrain run."""
    rows = []
    for run in runs:
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        row: dict[str, Any] = {
            "run_id": run.info.run_id, "run": short(run.info.run_id), "run_name": run.info.run_name,
            "status": run.info.status, "arm": tags.get("arm", ""), "start_time": run.info.start_time,
            "pretrain_run_id": run.info.run_id if tags.get("arm") == "pretrain" else tags.get("pretrain_run_id", ""),
            "parent_run_id": tags.get(PARENT_TAG, ""), "data_sha256": tags.get("data_sha256", ""),
            "data_path": tags.get("data_path", ""), "class_names": tags.get("class_names", ""),
            "model": model_name(params)}
        row.update({f"param_{name}": params.get(name) for name in PARAMS})
        row.update({name: metrics.get(name, np.nan) for name in METRICS})
        row["train_eval_loss_final"] = metrics.get("train_eval_loss", np.nan)
        row["test_loss_final"] = metrics.get("test_loss", np.nan)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    pretrain = frame[frame.arm == "pretrain"].set_index("run_id")
    join = frame.pretrain_run_id.map(lambda pid: pid in pretrain.index)
    frame["mask_ratio"] = [float(pretrain.at[pid, "param_mask_ratio"]) if ok and arm != "scratch" else np.nan
                           for pid, ok, arm in zip(frame.pretrain_run_id, join, frame.arm)]
    frame["model"] = [pretrain.at[pid, "model"] if ok else model
                      for pid, ok, model in zip(frame.pretrain_run_id, join, frame.model)]
    for name in ("label_fraction", "labelled_jets", "seed"):
        frame[name] = pd.to_numeric(frame[f"param_{name}"], errors="coerce")
    return frame


def class_names(frame: pd.DataFrame) -> tuple[str, str]:
    """(label 1, label 0) names of the runs' data, e.g. ("top", "QCD"): from a run's ``class_names``
    tag, else from the attributes of its data file (runs logged before the tag), else generic."""
    if frame.empty:
        return "signal", "background"
    for names in frame.class_names:
        if names and "," in names:
            signal, background = names.split(",", 1)
            return signal, background
    for path in dict.fromkeys(frame.data_path):
        if path and Path(path).exists():  # a file, or a dataset's folder
            from mae_tracker.data.dataset import open_dataset

            try:
                with open_dataset(path) as dataset:
                    signal, background = dataset.info.class_names[:2]
                    return str(signal), str(background)
            except Exception:  # noqa: BLE001 - a file that moved on or changed: fall back
                continue
    return "signal", "background"


def model_name(params: dict[str, str]) -> str:
    """``vit-nano (vit, depth 4, dim 64)``: the variant with the run's non-zero overrides."""
    variant = params.get("variant", "")
    base = VARIANTS.get(variant)
    if base is None:
        return variant or "?"
    depth = int(params.get("depth") or 0) or base["depth"]
    dim = int(params.get("embed_dim") or 0) or base["embed_dim"]
    return f"{variant} ({base['kind']}, depth {depth}, dim {dim})"


def label_efficiency_frame(client: mlflow.MlflowClient, parent_run_id: str) -> pd.DataFrame:
    """The FINISHED children of a label-efficiency parent: arm, label_fraction, labelled_jets,
    seed, test_auc, test_acc, run_id (the latest finished run where a point was rerun)."""
    parent = client.get_run(parent_run_id)
    rows = []
    for run in _children(client, parent.info.experiment_id, parent_run_id):
        params, metrics = run.data.params, run.data.metrics
        if run.info.status != "FINISHED" or "test_auc" not in metrics:
            continue
        rows.append({"arm": run.data.tags.get("arm", ""), "label_fraction": float(params["label_fraction"]),
                     "labelled_jets": int(params["labelled_jets"]), "seed": int(params["seed"]),
                     "test_auc": metrics["test_auc"], "test_acc": metrics.get("test_acc", np.nan),
                     "run_id": run.info.run_id, "_start": run.info.start_time})
    columns = ["arm", "label_fraction", "labelled_jets", "seed", "test_auc", "test_acc", "run_id"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows).sort_values("_start").drop_duplicates(["arm", "label_fraction", "seed"], keep="last")
    return frame.sort_values(["arm", "label_fraction", "seed"])[columns].reset_index(drop=True)


def download_artifact(client: mlflow.MlflowClient, run_id: str, path: str, dst: str) -> str | None:
    """Local path of one artifact, or None when the run does not have it."""
    try:
        return client.download_artifacts(run_id, path, dst)
    except Exception:  # MLflow raises several types for a missing artifact
        return None


def latest_artifact(client: mlflow.MlflowClient, run_id: str, folder: str, pattern: str) -> str | None:
    """Artifact path of the lexically last file in ``folder`` matching ``pattern`` (a regex)."""
    try:
        names = [info.path for info in client.list_artifacts(run_id, folder) if not info.is_dir]
    except Exception:
        return None
    names = sorted(name for name in names if re.search(pattern, name.rsplit("/", 1)[-1]))
    return names[-1] if names else None
