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

from mae_tracker.sweep.bounds import out_of_bounds
from mae_tracker.sweep.checks import (Fail, SweepSpecError, check_config, check_keys, check_type, choice,
                                      config_fields, integer, mapping, number, read_yaml)
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
# A study is bound to one dataset and split (its trials are ranked on the same validation jets),
# so the split is fixed, never searched.
SPLIT_FIELDS = ("split_seed", "pretrain_fraction", "train_fraction", "val_fraction", "test_fraction")
NOT_SEARCHABLE = SWEEP_OWNED + SPLIT_FIELDS + ("data", "device", "num_threads", "checkpoint_dir", "log_every_steps")


@dataclass(frozen=True)
class ParamSpec:
    """One searched PretrainConfig field."""

    name: str
    distribution: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    values: tuple[Any, ...] = ()
    log: bool = False  # sample on a log scale (log_uniform, or int with `log: true`)

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this parameter's value."""
        if self.distribution == "categorical":
            return trial.suggest_categorical(self.name, list(self.values))
        if self.distribution == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1),
                                     log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def extremes(self) -> list[tuple[str, Any]]:
        """(key, value) of what the search can reach at most: each listed value, or min and max."""
        if self.distribution == "categorical":
            return [("values", value) for value in self.values]
        return [("min", self.low), ("max", self.high)]


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
    def monitor_key(self) -> str:
        """The per-epoch pretrain metric given to the pruner; same direction as the objective."""
        return "train_eval_loss" if self.objective == "reconstruction" else "val_probe_auc"

    def with_overrides(self, **changes: Any) -> "SweepSpec":
        return dataclasses.replace(self, **changes)


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML; raises :class:`SweepSpecError` (one line) on any problem."""
    path = Path(path)
    raw, text = read_yaml(path, "sweep", SweepSpecError)
    return parse_spec(raw, path=path, text=text)


def parse_spec(raw: Any, *, path: Path, text: str = "") -> SweepSpec:
    """Validate an already-parsed YAML mapping (see :func:`load_spec`)."""
    def fail(key: str, message: str) -> SweepSpecError:
        return SweepSpecError(f"{path}: {key}: {message}")

    if not isinstance(raw, dict):
        raise SweepSpecError(f"{path}: the sweep file must be a mapping of keys ({', '.join(TOP_KEYS)})")
    check_keys(raw, TOP_KEYS, "", fail)

    method = choice(raw.get("method", "tpe"), METHODS, "method", fail)
    objective = choice(raw.get("objective", "probe"), OBJECTIVES, "objective", fail)
    metric, goal = _metric(raw.get("metric"), objective, fail)
    pruner, pruner_options = _pruner(raw.get("pruner", "none"), fail)
    parameters = {name: _param(name, value, fail) for name, value in mapping(raw, "parameters", fail).items()}
    if not parameters:
        raise fail("parameters", "at least one searched parameter is required")
    if method == "grid":
        for name, p in parameters.items():
            if p.distribution != "categorical":
                raise fail(f"parameters.{name}", "method grid needs every parameter as a list of `values`")
    fixed = mapping(raw, "fixed", fail)
    if isinstance(fixed.get("data"), list):  # a YAML list of files, folders or globs: one comma string
        fixed = {**fixed, "data": ",".join(str(entry) for entry in fixed["data"])}
    fixed = config_fields(fixed, PretrainConfig, SWEEP_OWNED, "fixed", fail)
    overlap = sorted(set(fixed) & set(parameters))
    if overlap:
        raise fail(f"fixed.{overlap[0]}", "is also a searched parameter; keep it in one place")
    downstream = config_fields(mapping(raw, "downstream", fail), DownstreamConfig,
                                SWEEP_OWNED + FROM_PRETRAIN + ("arm", "encoder_uri"), "downstream", fail)
    # The configs' own checks, on every trial the search can produce at its extremes.
    check_config(PretrainConfig, fixed, "fixed", fail)
    for name, p in parameters.items():
        for where, value in p.extremes():
            check_config(PretrainConfig, {**fixed, name: value}, f"parameters.{name}.{where}", fail)
    check_config(DownstreamConfig, {**downstream, "arm": "scratch"}, "downstream", fail)

    grid_size = math.prod(len(p.values) for p in parameters.values()) if method == "grid" else 0
    n_trials = integer(raw.get("n_trials", grid_size or None), "n_trials", fail, minimum=1)
    heartbeat = mapping(raw, "heartbeat", fail)
    check_keys(heartbeat, HEARTBEAT_KEYS, "heartbeat.", fail)
    interval = integer(heartbeat.get("interval", 30), "heartbeat.interval", fail, minimum=1)
    grace = integer(heartbeat.get("grace_period", 4 * interval), "heartbeat.grace_period", fail, minimum=1)
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
        seed=integer(raw.get("seed", 0), "seed", fail, minimum=0), metric=metric, goal=goal,
        objective=objective, n_trials=n_trials, pruner=pruner, pruner_options=pruner_options,
        parameters=parameters, fixed=fixed, downstream=downstream, promote=promote,
        heartbeat_interval=interval, grace_period=grace,
        max_retry=integer(heartbeat.get("max_retry", 1), "heartbeat.max_retry", fail, minimum=0),
        description=str(raw.get("description", "")),
    )


# --- sections that need more than a generic check --------------------------------------------

def _metric(raw: Any, objective: str, fail: Fail) -> tuple[str, str]:
    allowed = OBJECTIVE_METRICS[objective]
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise fail("metric", "must be a mapping {name: ..., goal: maximize|minimize}")
    check_keys(raw, ("name", "goal"), "metric.", fail)
    name = raw.get("name", next(iter(allowed)))
    if name not in allowed:
        raise fail("metric.name", f"{name!r} is not scored by objective {objective}; use one of {', '.join(allowed)}")
    goal = raw.get("goal", allowed[name])
    if goal not in ("maximize", "minimize"):
        raise fail("metric.goal", f"{goal!r} is not allowed; use maximize or minimize")
    if goal != allowed[name]:
        raise fail("metric.goal", f"{name} must be {allowed[name]}d, not {goal}d")
    return name, goal


def _pruner(raw: Any, fail: Fail) -> tuple[str, dict[str, Any]]:
    if raw is None or isinstance(raw, str):
        raw = {"type": raw or "none"}
    if not isinstance(raw, dict):
        raise fail("pruner", "must be a mapping {type: median|hyperband|threshold|none, ...}")
    kind = choice(raw.get("type", "none"), tuple(PRUNERS), "pruner.type", fail)
    options = {k: v for k, v in raw.items() if k != "type"}
    check_keys(options, PRUNERS[kind], "pruner.", fail)
    for key, value in options.items():
        if key in ("lower", "upper"):
            options[key] = float(number(value, f"pruner.{key}", fail))
        elif not (key == "max_resource" and value == "auto"):
            options[key] = integer(value, f"pruner.{key}", fail, minimum=1 if key != "n_warmup_steps" else 0)
    if kind == "threshold" and not {"lower", "upper"} & set(options):
        raise fail("pruner", "type threshold needs `lower` and/or `upper`")
    return kind, options


def _param(name: str, raw: Any, fail: Fail) -> ParamSpec:
    key = f"parameters.{name}"
    fields = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}
    if name not in fields or name in NOT_SEARCHABLE:
        allowed = ", ".join(n for n in fields if n not in NOT_SEARCHABLE)
        raise fail(key, f"not a searchable PretrainConfig field; allowed: {allowed}")
    if isinstance(raw, list):  # `depth: [2, 3, 4]` is shorthand for a categorical
        raw = {"values": raw}
    if not isinstance(raw, dict):
        raise fail(key, "must be a mapping {distribution, min, max} or {values: [...]}")
    check_keys(raw, PARAM_KEYS, f"{key}.", fail)
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
            check_type(value, kind, f"{key}.values", fail, field=name)
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
    low, high = number(raw["min"], f"{key}.min", fail), number(raw["max"], f"{key}.max", fail)
    if low >= high:
        raise fail(key, f"empty range: min ({low}) must be < max ({high})")
    log = raw.get("log", dist == "log_uniform")
    if not isinstance(log, bool) or (dist == "log_uniform" and not log):
        raise fail(f"{key}.log", f"must be true or false (true for log_uniform), got {log!r}")
    if log and low <= 0:
        raise fail(f"{key}.min", f"must be > 0 on a log scale, got {low}")
    step = raw.get("step")
    if step is not None:
        step = number(step, f"{key}.step", fail)
        if step <= 0 or log:
            raise fail(f"{key}.step", "must be > 0 and is not allowed on a log scale")
    if dist == "int":
        for bound, value in (("min", low), ("max", high), ("step", step)):
            if value is not None and float(value) != int(value):
                raise fail(f"{key}.{bound}", f"must be an integer for distribution int, got {value}")
        low, high = int(low), int(high)
    for bound, value in (("min", low), ("max", high)):
        problem = out_of_bounds(name, value)
        if problem:
            raise fail(f"{key}.{bound}", problem)
    return ParamSpec(name, dist, low=low, high=high, step=step, log=log)
