"""Label efficiency: test AUC of finetune / probe / scratch against the number of labelled jets.

One parent run; one child run per (arm, labelled fraction, seed), nested under it. Rerunning
with the parent's id skips the children that finished and reruns the rest. The classical
baselines (``observable``, ``gbdt``, ``cnn``; see mae_tracker.baselines) may be listed as arms
too: they train on exactly the same labelled jets and are scored on the same test jets.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import mlflow

from mae_tracker.report import collect, figures
from mae_tracker.train import saved_model, tracking
from mae_tracker.baselines.config import BASELINES
from mae_tracker.train.config import DOWNSTREAM_ARMS, DownstreamConfig

DEFAULT_FRACTIONS = (0.01, 0.1, 1.0)
DEFAULT_SEEDS = (0, 1, 2)
KIND = "label-efficiency"
PLAN_TAG = "label_efficiency_plan"  # JSON: encoder_uri, fractions, seeds, arms and the overrides
# Set by the grid itself; everything else in DownstreamConfig may be overridden.
RESERVED = ("arm", "encoder_uri", "label_fraction", "seed", "resume", "run_name", "experiment")
# Taken from the encoder's pretrain run unless overridden: the downstream arms must use the
# split pretraining used, or the test jets could be jets the encoder was pretrained on.
SPLIT_FIELDS = {"data": str, "split_seed": int, "pretrain_fraction": float, "train_fraction": float,
                "val_fraction": float, "test_fraction": float}


def run_label_efficiency(encoder_uri: str = "", *, fractions: Sequence[float] | None = None,
                         seeds: Sequence[int] | None = None, arms: Sequence[str] | None = None,
                         overrides: dict[str, Any] | None = None,
                         baseline_overrides: dict[str, Any] | None = None,
                         fraction_overrides: dict[float, dict[str, Any]] | None = None,
                         experiment: str = "mae-tracker", resume: str = "", progress: bool = True) -> dict[str, Any]:
    """Run every (arm, fraction, seed) from one encoder as child runs of one parent run.

    ``encoder_uri``: ``runs:/<id>/encoder`` or ``models:/<name>@<alias>``; scratch gets it too
    and borrows only its architecture and preprocessing. ``fractions`` of the labelled train
    split (default 1 %, 10 %, 100 %), ``seeds`` (default 0, 1, 2), ``arms`` (default all three),
    ``overrides``: any other DownstreamConfig field (epochs, batch_size, lr, ...); the data file
    and split default to those of the encoder's pretrain run. Arms named in BASELINES run
    the classical baselines with ``baseline_overrides`` (BaselineConfig fields).
    ``fraction_overrides`` maps a fraction to fields for every child at that fraction (e.g. more
    epochs and a smaller batch for 1 % of the labels); a field goes to the children whose config
    has it. ``resume``: the parent run id of
    an earlier call; its stored encoder, fractions, seeds, arms and overrides are used (giving
    different ones is an error), finished children are kept and the others rerun.

    Raises ValueError before any run starts if a fraction leaves fewer labelled jets than one
    batch. Children that fail are reported and the others go on; the parent then ends FAILED
    and a TrainingFailed (RuntimeError) names them (rerun with ``resume``). Returns ``run_id`` (the parent),
    ``table`` (pandas: arm, label_fraction, labelled_jets, seed, test_auc, test_acc, run_id),
    ``trained`` and ``skipped`` (child counts of this call).
    """
    tracking.configure_tracking()
    client = mlflow.MlflowClient()
    requested = {"encoder_uri": encoder_uri or None, "fractions": _floats(fractions), "seeds": _ints(seeds),
                 "arms": list(arms) if arms is not None else None, "overrides": overrides,
                 "baseline_overrides": baseline_overrides,
                 "fraction_overrides": _fraction_keys(fraction_overrides)}
    plan = _stored_plan(client, resume, requested) if resume else {
        "encoder_uri": encoder_uri, "fractions": requested["fractions"] or list(DEFAULT_FRACTIONS),
        "seeds": requested["seeds"] or list(DEFAULT_SEEDS), "arms": requested["arms"] or list(DOWNSTREAM_ARMS),
        "overrides": dict(overrides or {}), "baseline_overrides": dict(baseline_overrides or {}),
        "fraction_overrides": requested["fraction_overrides"] or {}}
    if not plan["encoder_uri"]:
        raise ValueError("label efficiency needs an encoder_uri (runs:/<run_id>/encoder or models:/<name>@<alias>)")
    _check_plan(plan)
    settings, pretrain_run_id = _with_pretrain_split(client, plan["encoder_uri"], plan["overrides"])
    split = {name: settings[name] for name in SPLIT_FIELDS if name in settings}
    configs = {(arm, fraction, seed): _child_config(plan, arm, fraction, seed, settings, split, experiment)
               for fraction in plan["fractions"] for arm in plan["arms"] for seed in plan["seeds"]}
    jets = _check_label_counts(configs, progress)

    trained, skipped, failures = 0, 0, []
    # The shared run lifecycle: resume joins the parent, `mlflow run` makes the launcher's run
    # the parent; an error ends it FAILED, Ctrl-C KILLED, each with an end_reason naming the id.
    with tracking.tracked_run(experiment, f"label-efficiency-{time.strftime('%Y%m%d-%H%M%S')}", resume) as parent:
        parent_id = parent.info.run_id
        if not resume:
            _describe_parent(plan, pretrain_run_id)
        done = _finished_children(client, parent.info.experiment_id, parent_id)
        for n, (key, config) in enumerate(configs.items(), 1):
            arm, fraction, seed = key
            label = f"[{n}/{len(configs)}] {arm:8s} fraction {fraction:g} ({jets[(fraction, seed)]} jets) seed {seed}"
            if key in done:
                skipped += 1
                _say(progress, f"{label}: finished earlier (run {done[key][:8]}), skipped")
                continue
            started = time.perf_counter()
            try:
                result = _train(config)
            except Exception as err:  # the child is FAILED in MLflow; the grid goes on
                failures.append(f"{arm} fraction {fraction:g} seed {seed}: {type(err).__name__}: {err}")
                _say(progress, f"{label}: FAILED ({type(err).__name__}: {err})")
                continue
            trained += 1
            _say(progress, f"{label}: test AUC {result['test_auc']:.4f} acc {result['test_acc']:.4f} "
                           f"(run {result['run_id'][:8]}, {time.perf_counter() - started:.0f} s)")
        table = _log_results(client, parent_id)
        if failures:
            from mae_tracker.train.loop import TrainingFailed  # a RuntimeError the CLI prints as one message

            raise TrainingFailed(f"{len(failures)} of {len(configs)} label-efficiency runs failed (rerun with "
                                 f"resume={parent_id} to retry them):\n  " + "\n  ".join(failures))
        if "end_reason" in client.get_run(parent_id).data.tags:  # left by an earlier, interrupted call
            client.delete_tag(parent_id, "end_reason")
    _say(progress, f"label efficiency: parent run {parent_id}, {trained} trained, {skipped} kept from before")
    return {"run_id": parent_id, "table": table, "trained": trained, "skipped": skipped}


def _train(config: Any) -> dict[str, Any]:
    if not isinstance(config, DownstreamConfig):  # a classical baseline
        from mae_tracker.baselines import run_baseline

        return run_baseline(config, progress=False)
    from mae_tracker.train.downstream import train_classifier  # torch import only when training

    return train_classifier(config, progress=False)


def _baseline_config_class() -> type:
    from mae_tracker.baselines import BaselineConfig

    return BaselineConfig


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _fraction_keys(fraction_overrides: dict[Any, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
    """JSON-safe keys ("0.01"), so that the stored plan compares equal to a new request."""
    if fraction_overrides is None:
        return None
    return {f"{float(fraction):g}": dict(fields) for fraction, fields in fraction_overrides.items()}


def _check_plan(plan: dict[str, Any]) -> None:
    """Arms, override fields and fractions are checked before any run exists."""
    unknown_arms = sorted(set(plan["arms"]) - set(DOWNSTREAM_ARMS) - set(BASELINES))
    if unknown_arms:
        raise ValueError(f"unknown arms {unknown_arms}; use {', '.join(DOWNSTREAM_ARMS + BASELINES)}")
    baseline_fields = _field_names(_baseline_config_class()) if set(plan["arms"]) & set(BASELINES) else set()
    sections = [("overrides", plan["overrides"], _field_names(DownstreamConfig)),
                ("baseline_overrides", plan["baseline_overrides"], baseline_fields or _field_names(DownstreamConfig))]
    sections += [(f"fraction_overrides[{key}]", fields, _field_names(DownstreamConfig) | baseline_fields)
                 for key, fields in plan["fraction_overrides"].items()]
    for where, fields, allowed in sections:
        bad = sorted(set(fields) & set(RESERVED + ("kind",)))
        if bad:
            raise ValueError(f"{where} may not set {bad}: the grid sets them per child run")
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise ValueError(f"unknown fields in {where}: {unknown}")
    stray = sorted(set(plan["fraction_overrides"]) - {f"{f:g}" for f in plan["fractions"]})
    if stray:
        raise ValueError(f"fraction_overrides for {stray}, which are not among the fractions {plan['fractions']}")


def _child_config(plan: dict[str, Any], arm: str, fraction: float, seed: int, settings: dict[str, Any],
                  split: dict[str, Any], experiment: str) -> Any:
    """One child's config: arm defaults < overrides < this fraction's overrides (fields it has)."""
    common = {"label_fraction": fraction, "seed": seed, "experiment": experiment,
              "run_name": f"{arm}-f{fraction:g}-s{seed}"}
    per_fraction = plan["fraction_overrides"].get(f"{fraction:g}", {})
    if arm in BASELINES:
        cls = _baseline_config_class()
        names = _field_names(cls)
        fields = {**split, **plan["baseline_overrides"], **{k: v for k, v in per_fraction.items() if k in names}}
        return cls(kind=arm, **common, **fields)
    names = _field_names(DownstreamConfig)
    fields = {**settings, **{k: v for k, v in per_fraction.items() if k in names}}
    return DownstreamConfig.for_arm(arm, encoder_uri=plan["encoder_uri"], **common, **fields)


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, flush=True)


def _floats(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _ints(values: Sequence[int] | None) -> list[int] | None:
    return None if values is None else [int(v) for v in values]


def same_plan(parent_id: str, encoder_uri: str, *, fractions: Sequence[float], seeds: Sequence[int],
              arms: Sequence[str], overrides: dict[str, Any], baseline_overrides: dict[str, Any],
              fraction_overrides: dict[float, dict[str, Any]]) -> bool:
    """Whether the label-efficiency parent ``parent_id`` was started with exactly this plan (so
    that resuming it continues the same grid rather than failing on a changed setting)."""
    requested = {"encoder_uri": encoder_uri, "fractions": _floats(fractions), "seeds": _ints(seeds),
                 "arms": list(arms), "overrides": dict(overrides), "baseline_overrides": dict(baseline_overrides),
                 "fraction_overrides": _fraction_keys(fraction_overrides)}
    try:
        _stored_plan(mlflow.MlflowClient(), parent_id, requested)
    except ValueError:
        return False
    return True


def _stored_plan(client: mlflow.MlflowClient, parent_id: str, requested: dict[str, Any]) -> dict[str, Any]:
    """The resumed parent's own plan; anything the caller gave must agree with it."""
    try:
        parent = client.get_run(parent_id)
    except Exception as err:
        raise ValueError(f"cannot resume label-efficiency run {parent_id!r}: {str(err).splitlines()[0]}") from err
    if parent.data.tags.get("kind") != KIND:
        raise ValueError(f"run {parent_id} is not a label-efficiency parent run (no tag kind={KIND})")
    plan = {"baseline_overrides": {}, "fraction_overrides": {}, **json.loads(parent.data.tags[PLAN_TAG])}
    for key, value in requested.items():
        if value is not None and value != plan[key]:
            raise ValueError(f"run {parent_id} was started with {key}={plan[key]!r}, not {value!r}; "
                             "start a new grid to change it")
    return plan


def _with_pretrain_split(client: mlflow.MlflowClient, encoder_uri: str, overrides: dict[str, Any]
                         ) -> tuple[dict[str, Any], str]:
    """``overrides`` plus the data file and split of the encoder's pretrain run (where not overridden)."""
    try:
        metadata = saved_model.model_metadata(encoder_uri, kind="encoder")
    except saved_model.UnsafeModelError:
        raise
    except Exception as err:
        raise ValueError(f"cannot load encoder {encoder_uri!r}: {str(err).splitlines()[0]}") from err
    pretrain_run_id = str(metadata.get("pretrain_run_id", ""))
    settings = dict(overrides)
    try:
        params = client.get_run(pretrain_run_id).data.params if pretrain_run_id else {}
    except Exception:  # e.g. a registered model from another store: fall back to the config defaults
        params = {}
    for name, kind in SPLIT_FIELDS.items():
        if name not in settings and name in params:
            settings[name] = kind(params[name])
    return settings, pretrain_run_id


def _check_label_counts(configs: dict[tuple[str, float, int], Any], progress: bool
                        ) -> dict[tuple[float, int], int]:
    """Labelled jets per (fraction, seed), exactly as the children will subsample them; a
    fraction below one batch of any child fails here, before any run exists."""
    from mae_tracker.train.data import prepare_data, subsample

    train = prepare_data(next(iter(configs.values())), progress=progress).splits["train"]
    jets = {(f, s): len(subsample(train, f, s)) for (_, f, s) in configs}
    for (arm, fraction, seed), config in configs.items():
        n = jets[(fraction, seed)]
        if n < config.batch_size:
            raise ValueError(
                f"label fraction {fraction:g} gives {n} labelled jets (train split: {len(train)}), fewer "
                f"than one batch of {config.batch_size} ({arm}): use a batch_size of at most {n} "
                f"(overrides={{'batch_size': {n}}}, or for this fraction only fraction_overrides) or "
                f"fractions of at least {config.batch_size / len(train):.3g}")
    return jets


def _describe_parent(plan: dict[str, Any], pretrain_run_id: str) -> None:
    """The plan is a tag (resume reads it back); params show it in the UI. `mlflow run -P` may
    have logged some of these keys already, in its own spelling: those are left as they are."""
    mlflow.set_tags({"kind": KIND, "encoder_uri": plan["encoder_uri"], "pretrain_run_id": pretrain_run_id,
                     PLAN_TAG: json.dumps(plan, sort_keys=True)})
    tracking.log_params_once({"encoder_uri": plan["encoder_uri"], "fractions": json.dumps(plan["fractions"]),
                              "seeds": json.dumps(plan["seeds"]), "arms": json.dumps(plan["arms"]),
                              "overrides": json.dumps(plan["overrides"], sort_keys=True),
                              "baseline_overrides": json.dumps(plan["baseline_overrides"], sort_keys=True),
                              "fraction_overrides": json.dumps(plan["fraction_overrides"], sort_keys=True)})


def _finished_children(client: mlflow.MlflowClient, experiment_id: str, parent_id: str
                       ) -> dict[tuple[str, float, int], str]:
    """(arm, fraction, seed) -> run id of FINISHED children. Children left RUNNING by a dead
    process are marked KILLED, so that no run pretends to be in progress."""
    done: dict[tuple[str, float, int], str] = {}
    for run in collect._children(client, experiment_id, parent_id):
        params = run.data.params
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "end_reason", "left running by an interrupted grid; rerun on resume")
            client.set_terminated(run.info.run_id, "KILLED")
        elif run.info.status == "FINISHED" and "label_fraction" in params and "seed" in params:
            done[(run.data.tags.get("arm", ""), float(params["label_fraction"]), int(params["seed"]))] = run.info.run_id
    return done


def _log_results(client: mlflow.MlflowClient, parent_id: str) -> Any:
    """The parent's CSV and curve, from its finished children as stored in MLflow."""
    table = collect.label_efficiency_frame(client, parent_id)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "label_efficiency.csv"
        table.to_csv(csv, index=False)
        mlflow.log_artifact(str(csv))
        if not table.empty:
            figure = Path(tmp) / "label_efficiency.png"
            figures.save(figures.label_efficiency_figure(table), str(figure))
            mlflow.log_artifact(str(figure))
    return table
