"""One study, one dataset: a sweep's study is bound to the data file (by content digest) and
the split of its first trial, and trials on anything else are refused before they run.

Trials are ranked against each other by their validation score; scores on another file or
another split are not comparable, so a study that mixed them would pick its "best" trial by
accident. The binding lives in the study's user attrs; a study made before they existed is
bound to what its first trial's pretrain run logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import mlflow
import optuna

from mae_tracker.sweep.spec import SPLIT_FIELDS

DIGEST_ATTR, PATH_ATTR, SPLIT_ATTR = "data_sha256", "data_path", "data_split"


@dataclass(frozen=True)
class DataBinding:
    """A data file by path and sha256 of its bytes, and the split the runs make of it."""

    path: str
    digest: str
    split: str

    def describe(self) -> str:
        return f"{self.path} (sha256 {self.digest[:12]}, split {self.split})"

    def differs_from(self, other: "DataBinding") -> str:
        """'' when the same data and split, else what differs, in words."""
        if self.digest != other.digest:
            return "the file changed since" if self.path == other.path else "another file"
        return "another split" if self.split != other.split else ""


def split_text(values: Mapping[str, Any]) -> str:
    """``seed 0, fractions 0.5/0.3/0.1/0.1`` (pretrain/train/val/test) from config fields."""
    seed, *fractions = (values[name] for name in SPLIT_FIELDS)
    return f"seed {int(seed)}, fractions {'/'.join(f'{float(f):g}' for f in fractions)}"


def bound_data(study: optuna.Study) -> DataBinding | None:
    """What ``study`` is bound to: its attrs, else its first trial's pretrain run, else None."""
    attrs = study.user_attrs
    if attrs.get(DIGEST_ATTR):
        return DataBinding(attrs.get(PATH_ATTR, "?"), attrs[DIGEST_ATTR], attrs.get(SPLIT_ATTR, "?"))
    client = mlflow.MlflowClient()
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        logged = _logged_by(client, trial)
        if logged is not None:
            return logged
    return None


def _logged_by(client: mlflow.MlflowClient, trial: optuna.trial.FrozenTrial) -> DataBinding | None:
    """The data and split a trial's pretrain run logged (a pruned trial's too: the run logs its
    data when it starts), found from the trial's own run."""
    pretrain_id, trial_run_id = trial.user_attrs.get("pretrain_run_id"), trial.user_attrs.get("mlflow_run_id")
    try:
        if pretrain_id:
            runs = [client.get_run(pretrain_id)]
        elif trial_run_id:
            experiment_id = client.get_run(trial_run_id).info.experiment_id
            runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{trial_run_id}'")
        else:
            return None
    except mlflow.exceptions.MlflowException:
        return None  # runs elsewhere: the parent-run check says so
    for run in runs:
        tags, params = run.data.tags, run.data.params
        if "data_sha256" in tags and all(name in params for name in SPLIT_FIELDS):
            return DataBinding(tags.get("data_path", "?"), tags["data_sha256"], split_text(params))
    return None


def bind(study: optuna.Study, data: DataBinding) -> None:
    study.set_user_attr(PATH_ATTR, data.path)
    study.set_user_attr(SPLIT_ATTR, data.split)
    study.set_user_attr(DIGEST_ATTR, data.digest)  # last: its presence means the binding is whole


def mismatch(what: str, bound: DataBinding, data: DataBinding, remedy: str) -> str:
    """The one-line refusal: ``what`` was run on ``bound``; this is ``data``; ``remedy``."""
    return (f"{what} was run on {bound.describe()}; this is {bound.differs_from(data)}: {data.describe()}. "
            f"A study ranks its trials on one dataset and split: {remedy}")


def check_same_data(study: optuna.Study, data: DataBinding, where: str, url: str) -> DataBinding | None:
    """Raise ValueError if ``study`` is bound to other data or another split than ``data``.
    Returns the binding found (None: the study is not bound yet). ``where``: the sweep file."""
    bound = bound_data(study)
    if bound is not None and bound.differs_from(data):
        name = study.study_name
        raise ValueError(f"{where}: " + mismatch(
            f"study {name!r} in {url}", bound, data,
            f"start a new study for this data with --study-name {name}-{data.digest[:8]} "
            f"(or another `name:` in {where})"))
    return bound
