"""The MLflow model registry: one registered model per family, champion/challenger by alias.

A *family* is everything that can stand in for everything else: same model role, encoder
kind, image shape and channels (``mae-vit-32x32x3`` for pretrained encoders,
``tagger-vit-32x32x3`` for fine-tuned quark/gluon classifiers). Loading
``models:/<family>@champion`` therefore always gives a model that fits the same images.

Stages are deprecated in MLflow 3, so promotion uses aliases only:

- every accepted candidate is registered as a new version and first takes ``challenger``;
- it takes ``champion`` only if it beats the current champion on the same validation data
  (same data sha256, split seed and fractions, same metric and goal, same evaluation
  protocol; compared through version tags) by more than the noise of the comparison
  (``registry.evidence``: from both versions' recorded standard errors), or if the family has
  no champion yet; the winner then drops ``challenger`` so that alias means "the latest
  candidate that lost";
- refused outright (ValueError, one line): runs not FINISHED, pruned runs (tag
  ``optuna_state=PRUNED`` or an ``end_reason`` saying pruned, on the run or any parent run),
  a missing or non-finite metric, a metric of the test split, a metric without its logged
  standard error (runs from before promotion intervals), a validation AUC whose 95 % interval
  does not exclude 0.5 (chance level), no logged model.

Every version records the metric's error, the floor AUC's interval and, when it was compared,
the comparison's noise as tags; the reason (tag ``promotion``) says all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from mae_tracker.models.packaged import INPUT_LAYOUT
from mae_tracker.train import saved_model
from mae_tracker.registry.evidence import (check_finite_losses, check_floor, comparison_noise, is_test_metric,
                                           read_evidence)
from mae_tracker.train.tracking import configure_tracking

CHAMPION = "champion"
CHALLENGER = "challenger"
GOALS = ("maximize", "minimize")

# Which logged model a run offers, by its `arm` tag, and what it is scored on by default.
MODEL_BY_ARM = {"pretrain": "encoder", "finetune": "classifier", "probe": "classifier", "scratch": "classifier"}
DEFAULT_METRIC = {"encoder": "val_probe_auc", "classifier": "best_val_auc"}
# "tagger", not "classifier": the registered thing takes raw images and returns P(label 1)
# (preprocessing inside), whatever arm trained it; the arm is a version tag.
FAMILY_PREFIX = {"encoder": "mae", "classifier": "tagger"}

SPLIT_KEYS = ("split_seed", "pretrain_fraction", "train_fraction", "val_fraction", "test_fraction", "split_scheme")
# Two versions' metric values are only compared when all of these are equal.
COMPARABLE_KEYS = ("metric", "goal", "data_sha256", *SPLIT_KEYS, "eval_protocol")
MAX_PARENT_DEPTH = 5  # sweep parent > trial > arm run; deeper chains are not ours


@dataclass
class PromotionResult:
    """What happened to one candidate: its new version and the alias it holds now."""

    registered_model: str
    version: str
    alias: str  # "champion" or "challenger"
    reason: str
    previous_champion_version: str | None  # the champion before this promotion (None: there was none)
    interval: str = ""  # the floor AUC with its 95 % interval, e.g. "val_probe_auc 0.7812, 95 % interval [...]"
    noise: float | None = None  # the comparison's noise (None: nothing to compare with)


def family_name(model: str, encoder_config: dict[str, Any]) -> str:
    """``<role>-<encoder kind>-<H>x<W>x<C>``: e.g. ``mae-vit-32x32x3``, ``tagger-hybrid-125x125x3``.

    HxWxC follows the HDF5 files (channels last, like the CMS E2E ``X_jets``), which is what a
    physicist knows their images by.
    """
    height, width = encoder_config["img_size"]
    return f"{FAMILY_PREFIX[model]}-{encoder_config['kind']}-{height}x{width}x{encoder_config['in_chans']}"


def promote(run_id: str, *, metric: str | None = None, value: float | None = None, goal: str = "maximize",
            study: str = "", trial: int | None = None, metric_run_id: str | None = None,
            metric_key: str | None = None) -> PromotionResult:
    """Register the run's model (pretrain: ``encoder``; finetune/probe/scratch: ``classifier``)
    in its family and decide champion vs challenger.

    ``metric`` defaults to ``val_probe_auc`` (pretrain) or ``best_val_auc`` (downstream); it is
    read with its standard error and the floor AUC's interval (``registry.evidence``) from
    ``metric_run_id`` (default: the run itself) under ``metric_key`` (default: ``metric``): a
    sweep's objective comes from another run. ``value``, when given, must be that logged value.
    ``goal`` says whether larger or smaller wins. Raises ValueError with a one-line reason when
    the run cannot be promoted.
    """
    if goal not in GOALS:
        raise ValueError(f"goal must be one of {GOALS}, got {goal!r}")
    for name in (metric, metric_key):
        if name and is_test_metric(name):
            raise ValueError(f"metric {name!r} is measured on the test split, which never chooses a model; "
                             "promote on a validation metric (val_probe_auc, best_val_auc)")
    configure_tracking()
    client = MlflowClient()
    run = get_run(client, run_id)
    _refuse_unusable(client, run)
    model = _model_role(run)
    model_id = _logged_model_id(client, run, model)
    metadata = saved_model.model_metadata(f"models:/{model_id}")  # refuses models not in the safe format
    if "encoder_config" not in metadata:
        raise ValueError(f"run {run_id}: model {model!r} has no encoder_config metadata (not logged by mae-tracker)")
    if model == "classifier" and metadata.get("input_layout") != INPUT_LAYOUT:
        # Older runs logged the bare JetClassifier (preprocessed NCHW input): registering it
        # would put two input conventions behind one family name.
        raise ValueError(f"run {run_id}: its classifier predates the raw-image tagger format "
                         f"(input_layout {metadata.get('input_layout')!r}, expected {INPUT_LAYOUT!r}); retrain it")
    metric = metric or DEFAULT_METRIC[model]
    source = run
    if metric_run_id and metric_run_id != run_id:
        source = get_run(client, metric_run_id)
        _refuse_unusable(client, source)
    evidence = read_evidence(source, metric_key or metric, value)
    if source is not run:
        check_finite_losses(run)  # the run itself must not have diverged either
    check_floor(evidence, run_id)

    family = family_name(model, metadata["encoder_config"])
    tags = _version_tags(client, run, model, metadata, metric, evidence.value, goal, study, trial)
    tags.update(evidence.tags())
    _ensure_registered_model(client, family, model)
    version = client.create_model_version(
        family, source=f"models:/{model_id}", run_id=run_id, model_id=model_id, tags=tags,
        description=_description(model, run, tags)).version
    version = str(version)
    client.set_registered_model_alias(family, CHALLENGER, version)
    alias, reason, previous, noise = _contest(client, family, version, tags)
    reason = f"{reason}; {evidence.interval()}"
    if noise is not None:
        client.set_model_version_tag(family, version, "comparison_noise", repr(noise))
    client.set_model_version_tag(family, version, "promotion", reason)
    return PromotionResult(family, version, alias, reason, previous, evidence.interval(), noise)


def get_run(client: MlflowClient, run_id: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as err:
        raise ValueError(f"cannot promote run {run_id!r}: {str(err).splitlines()[0]}") from err


def _pruned(run: Run) -> str:
    """Why the run counts as pruned ('' if it does not)."""
    tags = run.data.tags
    if tags.get("optuna_state", "").upper() == "PRUNED":
        return "tag optuna_state=PRUNED"
    if "pruned" in tags.get("end_reason", "").lower():
        return f"end_reason {tags['end_reason']!r}"
    return ""


def _refuse_unusable(client: MlflowClient, run: Run) -> None:
    """Pruned first (a pruned run is also KILLED, and 'pruned' is the useful message), then status."""
    run_id = run.info.run_id
    current: Run | None = run
    for _ in range(MAX_PARENT_DEPTH):
        why = _pruned(current)
        if why:
            where = "" if current is run else f" (its parent run {current.info.run_id})"
            raise ValueError(f"run {run_id} was pruned{where}: {why}; a pruned trial is never promoted")
        parent_id = current.data.tags.get("mlflow.parentRunId")
        current = client.get_run(parent_id) if parent_id else None
        if current is None:
            break
    if run.info.status != "FINISHED":
        ending = run.data.tags.get("end_reason", "")
        raise ValueError(f"run {run_id} is {run.info.status}, not FINISHED; only finished runs are promoted"
                         + (f" (end_reason: {ending.splitlines()[0]})" if ending else ""))


def _model_role(run: Run) -> str:
    arm = run.data.tags.get("arm", "")
    if arm not in MODEL_BY_ARM:
        raise ValueError(f"run {run.info.run_id} has arm tag {arm!r}; expected one of {sorted(MODEL_BY_ARM)}")
    return MODEL_BY_ARM[arm]


def _logged_model_id(client: MlflowClient, run: Run, name: str) -> str:
    """The model id of the run's logged model ``name`` (MLflow 3 logged models are entities
    of their own; the newest wins if a resumed run logged it twice)."""
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{name}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}])
    if not models:
        raise ValueError(f"run {run.info.run_id} has no logged model {name!r}; nothing to register")
    return models[0].model_id


# --------------------------------------------------------------------------- registering


def _version_tags(client: MlflowClient, run: Run, model: str, metadata: dict[str, Any], metric: str,
                  value: float, goal: str, study: str, trial: int | None) -> dict[str, str]:
    params, run_tags = run.data.params, run.data.tags
    encoder = metadata["encoder_config"]
    mask_ratio = params.get("mask_ratio", "")
    pretrain_id = run_tags.get("pretrain_run_id", "") if model == "classifier" else run.info.run_id
    if model == "classifier" and pretrain_id:  # the encoder's mask ratio is what a tagger inherits
        try:
            mask_ratio = client.get_run(pretrain_id).data.params.get("mask_ratio", "")
        except MlflowException:
            mask_ratio = ""
    protocol = ""
    if metric == "val_probe_auc":  # its validation subset and label count are settings of the run
        protocol = ";".join(f"{key}={params.get(key, '')}" for key in ("probe_train_jets", "probe_val_jets"))
    tags = {
        "metric": metric, "metric_value": repr(value), "goal": goal, "eval_protocol": protocol,
        "model": model, "arm": run_tags.get("arm", ""), "encoder_kind": encoder["kind"],
        "depth": str(encoder["depth"]), "embed_dim": str(encoder["embed_dim"]),
        "patch_size": str(encoder["patch_size"]), "mask_ratio": mask_ratio, "lr": params.get("lr", ""),
        "study": study, "trial": "" if trial is None else str(trial),
        "data_sha256": run_tags.get("data_sha256", metadata.get("data_sha256", "")),
        "source_run_id": run.info.run_id, "pretrain_run_id": pretrain_id,
        **{key: params.get(key, "") for key in SPLIT_KEYS},
        # runs from before split schemes split their one file by a seeded permutation
        "split_scheme": params.get("split_scheme", "permutation"),
    }
    if model == "classifier":
        tags["input_layout"] = str(metadata.get("input_layout", ""))
        tags["label_fraction"] = params.get("label_fraction", "")
    return tags


def _description(model: str, run: Run, tags: dict[str, str]) -> str:
    what = ("MAE-pretrained encoder: images (N,C,H,W), preprocessed, -> features (N,D)" if model == "encoder"
            else "jet tagger: raw images as stored in the HDF5 file -> P(label 1) (N,), "
                 f"preprocessing inside; input layout {tags.get('input_layout') or 'see model metadata'}")
    origin = f"run {run.info.run_id} ({run.info.run_name}, arm {tags['arm']})"
    if tags["study"]:
        origin += f", study {tags['study']} trial {tags['trial']}"
    return (f"{what}. From {origin}. {tags['metric']} = {float(tags['metric_value']):.4f} "
            f"± {float(tags['metric_se']):.4f} ({tags['goal']}) on data sha256 {tags['data_sha256'][:12]}, "
            f"split seed {tags['split_seed']}; {tags['floor_metric']} {float(tags['floor_value']):.4f}, 95 % "
            f"interval [{float(tags['floor_ci_low']):.4f}, {float(tags['floor_ci_high']):.4f}].")


def _ensure_registered_model(client: MlflowClient, family: str, model: str) -> None:
    # Create-and-ignore-exists rather than get-then-create: two sweeps may race to create it.
    try:
        client.create_registered_model(
            family, tags={"model": model},
            description=f"{model}s of the {family} family; @{CHAMPION} is the best on shared validation data")
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


# --------------------------------------------------------------------------- champion vs challenger


def _champion(client: MlflowClient, family: str) -> str | None:
    # search_model_versions returns empty aliases in MLflow 3: the registered model has them.
    version = client.get_registered_model(family).aliases.get(CHAMPION)
    return None if version is None else str(version)


def _contest(client: MlflowClient, family: str, version: str, tags: dict[str, str]
             ) -> tuple[str, str, str | None, float | None]:
    """(alias, reason, previous champion, comparison noise) for the freshly registered ``version``.

    Not atomic: MLflow has no compare-and-set on aliases. Two promotions racing on one family
    could each read the same champion, each beat it, and the later write would win even if
    it is the weaker one. We keep the window small by re-reading the champion just before
    writing and comparing again if it moved; the remaining window is between that re-read and
    set_registered_model_alias (milliseconds). Every version keeps its metric tags, so a
    wrong outcome is visible and can be fixed by promoting again.
    """
    champion = _champion(client, family)
    noise: float | None = None
    for _ in range(3):
        if champion is None:
            wins, reason, noise = True, "first candidate in the family, above the chance floor: becomes champion", None
        else:
            wins, reason, noise = compare(tags, client.get_model_version(family, champion).tags, champion)
        if not wins:
            return CHALLENGER, reason, champion, noise
        now = _champion(client, family)
        if now != champion:  # another promotion got there first: compare with its winner
            champion = now
            continue
        client.set_registered_model_alias(family, CHAMPION, version)
        if str(client.get_registered_model(family).aliases.get(CHALLENGER)) == version:
            client.delete_registered_model_alias(family, CHALLENGER)
        return CHAMPION, reason, champion, noise
    return (CHALLENGER, "champion changed repeatedly during promotion (concurrent sweeps); stays challenger",
            champion, noise)


def compare(candidate: dict[str, str], champion_tags: dict[str, str], champion: str
            ) -> tuple[bool, str, float | None]:
    """Does the candidate (version tags) beat champion v``champion``? (wins, reason, noise).

    Only on identical validation data and metric, and only by more than the comparison's noise
    (``registry.evidence.comparison_noise`` of both versions' ``metric_se``; a champion
    registered before errors were recorded counts with the candidate's error alone).
    """
    for key in COMPARABLE_KEYS:
        mine, theirs = candidate.get(key, ""), champion_tags.get(key, "")
        if mine != theirs:
            what = ("data digest" if key == "data_sha256" else "split" if key in SPLIT_KEYS
                    else "metric goal" if key == "goal" else "evaluation protocol" if key == "eval_protocol"
                    else "metric")
            shown = (mine[:12], theirs[:12]) if key == "data_sha256" else (mine, theirs)
            return False, (f"different {what} than champion v{champion} ({key} {shown[0]!r} vs {shown[1]!r}): "
                           "cannot compare; champion stays, candidate stays challenger"), None
    metric, goal = candidate["metric"], candidate["goal"]
    mine, theirs = float(candidate["metric_value"]), float(champion_tags["metric_value"])
    se_mine = float(candidate.get("metric_se") or 0.0)
    unrecorded = not champion_tags.get("metric_se")
    se_theirs = 0.0 if unrecorded else float(champion_tags["metric_se"])
    noise = comparison_noise(se_mine, se_theirs)
    gain = (mine - theirs) if goal == "maximize" else (theirs - mine)
    values = f"{metric} {mine:.4f} vs {theirs:.4f}"
    theirs_error = f"none recorded for v{champion}, registered before errors were" if unrecorded else f"{se_theirs:.3g}"
    margin = f"noise {noise:.4g} (95 %, errors {se_mine:.3g} and {theirs_error})"
    if gain > noise:
        return True, f"beats champion v{champion} by {gain:.4g} > {margin}: {values}; becomes champion", noise
    if gain > 0:
        return False, (f"better than champion v{champion} by {gain:.4g}, within the comparison's {margin}: {values}; "
                       "champion stays, candidate stays challenger"), noise
    if gain == 0:
        return False, f"ties champion v{champion} on {metric} ({mine:.4f}); champion stays", noise
    return False, f"worse than champion v{champion} by {-gain:.4g}: {values}; champion stays ({margin})", noise
