"""A sweep's YAML file -> a validated :class:`SweepSpec`.

Everything is checked here, before any storage, study or MLflow run exists, so a typo costs
nothing: each problem is one :class:`SweepSpecError` line naming the file, the key and what
is allowed. The YAML reads like a W&B / Ray Tune sweep (method, metric, parameters with
distributions, min/max, values) and a few of their spellings are accepted as aliases.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mae_tracker.train.config import DownstreamConfig, PretrainConfig

METHODS = ("tpe", "random", "grid")
OBJECTIVES = ("probe", "finetune", "reconstruction")
PRUNERS: dict[str, tuple[str, ...]] = {  # type -> its allowed options
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
    "threshold": ("lower", "upper", "n_warmup_steps"),
    "none": (),
}
# The value each objective is scored by, and its only sensible direction: maximising a loss
# is almost surely a typo, so a mismatched goal is an error rather than a silent bad sweep.
OBJECTIVE_METRICS: dict[str, dict[str, str]] = {
    "probe": {"val_auc": "maximize", "val_acc": "maximize"},
    "finetune": {"val_auc": "maximize", "val_acc": "maximize"},
    "reconstruction": {"train_eval_loss": "minimize"},
}
DISTRIBUTIONS = ("uniform", "log_uniform", "int", "categorical")
# W&B / Ray Tune spellings people will type from habit.
DISTRIBUTION_ALIASES = {"loguniform": "log_uniform", "log_uniform_values": "log_uniform",
                        "int_uniform": "int", "randint": "int", "choice": "categorical"}
PARAM_KEYS = ("distribution", "min", "max", "step", "log", "values")
TOP_KEYS = ("name", "experiment", "method", "seed", "metric", "objective", "n_trials", "pruner",
            "parameters", "fixed", "downstream", "promote", "heartbeat", "description")
HEARTBEAT_KEYS = ("interval", "grace_period", "max_retry")

# Fields the sweep itself sets for every run (names, resumption, registration is the
# registry's job via promotion), so neither `fixed` nor `parameters` may set them.
SWEEP_OWNED = ("experiment", "run_name", "resume", "register_as")
# The downstream arm must score the encoder on the trial's own data and split, and its
# architecture comes from the encoder: these are copied from the trial's PretrainConfig.
FROM_PRETRAIN = ("data", "split_seed", "pretrain_fraction", "train_fraction", "val_fraction",
                 "test_fraction", "variant", "patch_size", "depth", "embed_dim", "num_heads",
                 "device", "num_threads")
NOT_SEARCHABLE = SWEEP_OWNED + ("data", "device", "num_threads", "checkpoint_dir", "log_every_steps")


class SweepSpecError(ValueError):
    """A problem in a sweep YAML: one line, naming the file and the key."""


@dataclass(frozen=True)
class ParamSpec:
    """One searched PretrainConfig field."""

    name: str
    distribution: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    values: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this parameter's value."""
        if self.distribution == "categorical":
            return trial.suggest_categorical(self.name, list(self.values))
        if self.distribution == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, self.high, step=self.step,
                                   log=self.distribution == "log_uniform")


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: what to search, how, and how each trial is scored."""

    path: Path
    text: str  # the YAML as written, logged on the parent run as sweep.yaml
    name: str
    experiment: str
    method: str
    seed: int
    metric: str
    goal: str
    objective: str
    n_trials: int
    pruner: str
    pruner_options: dict[str, Any]
    parameters: dict[str, ParamSpec]
    fixed: dict[str, Any]
    downstream: dict[str, Any]
    promote: bool
    heartbeat_interval: int
    grace_period: int
    max_retry: int
    description: str = ""

    @property
    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space (categorical parameters only)."""
        return {name: list(p.values) for name, p in self.parameters.items()}

    @property
    def report_key(self) -> str:
        """The per-epoch pretrain metric given to the pruner; same direction as the objective."""
        return "train_eval_loss" if self.objective == "reconstruction" else "val_probe_auc"

    def with_overrides(self, **changes: Any) -> "SweepSpec":
        return dataclasses.replace(self, **changes)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML; raises :class:`SweepSpecError` (one line) on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SweepSpecError(f"{path}: cannot read the sweep file ({err.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SweepSpecError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    return parse_spec(raw, path=path, text=text)


def parse_spec(raw: Any, *, path: Path, text: str = "") -> SweepSpec:
    """Validate an already-parsed YAML mapping (see :func:`load_spec`)."""
    def fail(key: str, message: str) -> SweepSpecError:
        return SweepSpecError(f"{path}: {key}: {message}")

    if not isinstance(raw, dict):
        raise SweepSpecError(f"{path}: the sweep file must be a mapping of keys ({', '.join(TOP_KEYS)})")
    _check_keys(raw, TOP_KEYS, "", fail)

    method = _choice(raw.get("method", "tpe"), METHODS, "method", fail)
    objective = _choice(raw.get("objective", "probe"), OBJECTIVES, "objective", fail)
    metric, goal = _metric(raw.get("metric"), objective, fail)
    pruner, pruner_options = _pruner(raw.get("pruner", "none"), fail)
    parameters = {name: _param(name, value, fail) for name, value in _mapping(raw, "parameters", fail).items()}
    if not parameters:
        raise fail("parameters", "at least one searched parameter is required")
    if method == "grid":
        for name, p in parameters.items():
            if p.distribution != "categorical":
                raise fail(f"parameters.{name}", "method grid needs every parameter as a list of `values`")
    fixed = _config_fields(_mapping(raw, "fixed", fail), PretrainConfig, SWEEP_OWNED, "fixed", fail)
    overlap = sorted(set(fixed) & set(parameters))
    if overlap:
        raise fail(f"fixed.{overlap[0]}", "is also a searched parameter; keep it in one place")
    downstream = _config_fields(_mapping(raw, "downstream", fail), DownstreamConfig,
                                SWEEP_OWNED + FROM_PRETRAIN + ("arm", "encoder_uri"), "downstream", fail)

    grid_size = math.prod(len(p.values) for p in parameters.values()) if method == "grid" else 0
    n_trials = _int(raw.get("n_trials", grid_size or None), "n_trials", fail, minimum=1)
    heartbeat = _mapping(raw, "heartbeat", fail)
    _check_keys(heartbeat, HEARTBEAT_KEYS, "heartbeat.", fail)
    interval = _int(heartbeat.get("interval", 30), "heartbeat.interval", fail, minimum=1)
    grace = _int(heartbeat.get("grace_period", 4 * interval), "heartbeat.grace_period", fail, minimum=1)
    if grace <= interval:
        raise fail("heartbeat.grace_period", f"must be longer than heartbeat.interval ({interval} s)")
    promote = raw.get("promote", True)
    if not isinstance(promote, bool):
        raise fail("promote", f"must be true or false, got {promote!r}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise fail("name", "must be a non-empty string (the Optuna study name)")
    experiment = raw.get("experiment", "mae-tracker-sweeps")
    if not isinstance(experiment, str) or not experiment.strip():
        raise fail("experiment", "must be a non-empty string (the MLflow experiment)")
    return SweepSpec(
        path=path, text=text, name=name.strip(), experiment=experiment.strip(), method=method,
        seed=_int(raw.get("seed", 0), "seed", fail, minimum=0), metric=metric, goal=goal,
        objective=objective, n_trials=n_trials, pruner=pruner, pruner_options=pruner_options,
        parameters=parameters, fixed=fixed, downstream=downstream, promote=promote,
        heartbeat_interval=interval, grace_period=grace,
        max_retry=_int(heartbeat.get("max_retry", 1), "heartbeat.max_retry", fail, minimum=0),
        description=str(raw.get("description", "")),
    )


# --- helpers: each raises one line through `fail(key, message)` --------------------------------

def _check_keys(mapping: dict[str, Any], allowed: tuple[str, ...], prefix: str, fail: Any) -> None:
    for key in mapping:
        if key not in allowed:
            raise fail(f"{prefix}{key}", f"unknown key; allowed: {', '.join(allowed)}")


def _mapping(raw: dict[str, Any], key: str, fail: Any) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise fail(key, f"must be a mapping, got {type(value).__name__}")
    return value


def _choice(value: Any, allowed: tuple[str, ...], key: str, fail: Any) -> str:
    if value not in allowed:
        raise fail(key, f"{value!r} is not allowed; use one of {', '.join(allowed)}")
    return value


def _number(value: Any, key: str, fail: Any) -> float:
    # PyYAML reads `3e-4` (no dot) as a string; accept what is clearly a number.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(key, f"must be a finite number, got {value!r}")
    return value


def _int(value: Any, key: str, fail: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise fail(key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _metric(raw: Any, objective: str, fail: Any) -> tuple[str, str]:
    allowed = OBJECTIVE_METRICS[objective]
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise fail("metric", "must be a mapping {name: ..., goal: maximize|minimize}")
    _check_keys(raw, ("name", "goal"), "metric.", fail)
    name = raw.get("name", next(iter(allowed)))
    if name not in allowed:
        raise fail("metric.name", f"{name!r} is not scored by objective {objective}; use one of {', '.join(allowed)}")
    goal = raw.get("goal", allowed[name])
    if goal not in ("maximize", "minimize"):
        raise fail("metric.goal", f"{goal!r} is not allowed; use maximize or minimize")
    if goal != allowed[name]:
        raise fail("metric.goal", f"{name} must be {allowed[name]}d, not {goal}d")
    return name, goal


def _pruner(raw: Any, fail: Any) -> tuple[str, dict[str, Any]]:
    if raw is None or isinstance(raw, str):
        raw = {"type": raw or "none"}
    if not isinstance(raw, dict):
        raise fail("pruner", "must be a mapping {type: median|hyperband|threshold|none, ...}")
    kind = _choice(raw.get("type", "none"), tuple(PRUNERS), "pruner.type", fail)
    options = {k: v for k, v in raw.items() if k != "type"}
    _check_keys(options, PRUNERS[kind], "pruner.", fail)
    for key, value in options.items():
        if key in ("lower", "upper"):
            options[key] = float(_number(value, f"pruner.{key}", fail))
        elif not (key == "max_resource" and value == "auto"):
            options[key] = _int(value, f"pruner.{key}", fail, minimum=1 if key != "n_warmup_steps" else 0)
    if kind == "threshold" and not {"lower", "upper"} & set(options):
        raise fail("pruner", "type threshold needs `lower` and/or `upper`")
    return kind, options


def _param(name: str, raw: Any, fail: Any) -> ParamSpec:
    key = f"parameters.{name}"
    fields = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}
    if name not in fields or name in NOT_SEARCHABLE:
        allowed = ", ".join(n for n in fields if n not in NOT_SEARCHABLE)
        raise fail(key, f"not a searchable PretrainConfig field; allowed: {allowed}")
    if isinstance(raw, list):  # `depth: [2, 3, 4]` is shorthand for a categorical
        raw = {"values": raw}
    if not isinstance(raw, dict):
        raise fail(key, "must be a mapping {distribution, min, max} or {values: [...]}")
    _check_keys(raw, PARAM_KEYS, f"{key}.", fail)
    dist = raw.get("distribution", "categorical" if "values" in raw else "uniform")
    dist = DISTRIBUTION_ALIASES.get(dist, dist)
    if dist not in DISTRIBUTIONS:
        raise fail(f"{key}.distribution", f"{dist!r} is not allowed; use one of {', '.join(DISTRIBUTIONS)}")
    kind = fields[name]
    if dist == "categorical":
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise fail(f"{key}.values", "must be a non-empty list")
        extra = sorted(set(raw) - {"values", "distribution"})
        if extra:
            raise fail(f"{key}.{extra[0]}", "does not apply to a list of values")
        for value in values:
            _check_type(value, kind, f"{key}.values", fail)
        if len(set(map(repr, values))) != len(values):
            raise fail(f"{key}.values", "contains duplicates")
        return ParamSpec(name, dist, values=tuple(values))
    if "values" in raw:
        raise fail(f"{key}.values", f"does not apply to distribution {dist}")
    if kind not in ("int", "float") or (kind == "int" and dist != "int"):
        raise fail(f"{key}.distribution", f"{name} is {kind}; use "
                   + ("int or values" if kind == "int" else "values"))
    for bound in ("min", "max"):
        if bound not in raw:
            raise fail(f"{key}.{bound}", f"is required for distribution {dist}")
    low, high = _number(raw["min"], f"{key}.min", fail), _number(raw["max"], f"{key}.max", fail)
    if low >= high:
        raise fail(key, f"empty range: min ({low}) must be < max ({high})")
    if dist == "log_uniform" and low <= 0:
        raise fail(f"{key}.min", f"must be > 0 for log_uniform, got {low}")
    step = raw.get("step")
    if step is not None:
        step = _number(step, f"{key}.step", fail)
        if step <= 0 or dist == "log_uniform":
            raise fail(f"{key}.step", "must be > 0 and is not allowed with log_uniform")
    if dist == "int":
        for bound, value in (("min", low), ("max", high), ("step", step)):
            if value is not None and float(value) != int(value):
                raise fail(f"{key}.{bound}", f"must be an integer for distribution int, got {value}")
        low, high = int(low), int(high)
    return ParamSpec(name, dist, low=low, high=high, step=step)


def _check_type(value: Any, kind: str, key: str, fail: Any) -> None:
    if key.split(".")[-1] == "variant" or key.endswith("variant.values"):
        from mae_tracker.models.variants import VARIANTS

        if value not in VARIANTS:
            raise fail(key, f"unknown variant {value!r}; use one of {', '.join(VARIANTS)}")
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool),
          "str": isinstance(value, str)}.get(kind, True)
    if not ok:
        raise fail(key, f"{value!r} is not a valid {kind}")


def _config_fields(values: dict[str, Any], cls: type, reserved: tuple[str, ...], section: str,
                   fail: Any) -> dict[str, Any]:
    """Check a `fixed` / `downstream` section against the config dataclass's fields and types."""
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields or key in reserved:
            allowed = ", ".join(n for n in fields if n not in reserved)
            why = "is set by the sweep" if key in reserved else f"not a {cls.__name__} field"
            raise fail(f"{section}.{key}", f"{why}; allowed: {allowed}")
        if fields[key] == "float" and isinstance(value, str):
            value = values[key] = _number(value, f"{section}.{key}", fail)
        _check_type(value, fields[key], f"{section}.{key}", fail)
    return dict(values)
