"""A pipeline's YAML file -> a validated :class:`PipelineSpec`.

A pipeline is the physics question "does MAE pretraining pay off here, and by how much?" as one
resumable command: data (generated once and cached), a sweep for the MAE, the best
configuration pretrained for longer, then probe / finetune / scratch and the classical
baselines at several labelled fractions and seeds, and the report. Everything is checked
here, before any data, pipeline or run exists; each problem is one line naming the file and key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mae_tracker.baselines.config import BASELINES
from mae_tracker.sweep.bounds import out_of_bounds
from mae_tracker.sweep.checks import (Fail, SweepSpecError, check_config, check_keys, config_fields, integer,
                                      mapping, number, read_yaml)
from mae_tracker.sweep.spec import SPLIT_FIELDS, SweepSpec, load_spec
from mae_tracker.train.config import DOWNSTREAM_ARMS, DownstreamConfig, PretrainConfig

TOP_KEYS = ("name", "description", "data", "sweep", "pretrain", "arms", "baselines", "fractions", "seeds",
            "downstream", "baseline", "by_fraction")
DATA_KEYS = ("file", "task", "n_jets", "seed", "preset", "channels", "mpi", "pt_min", "pt_max", "eta_max")
# Set by the pipeline for every run, so no section may set them.
PIPELINE_OWNED = ("experiment", "run_name", "resume", "register_as", "data", "arm", "encoder_uri",
               "label_fraction", "seed", "kind")
# The long pretraining inherits the split of the sweep (the data is the pipeline's): a different
# split here would let the downstream test jets leak into pretraining.
SPLIT_OWNED = SPLIT_FIELDS


class PipelineSpecError(SweepSpecError):
    """A problem in a pipeline YAML: one line, naming the file and the key."""


@dataclass(frozen=True)
class PipelineSpec:
    """A validated pipeline: its data, its sweep, and the grid of downstream runs."""

    path: Path
    text: str  # the YAML as written, logged on the pipeline's parent run as pipeline.yaml
    name: str
    data: dict[str, Any]  # {"file": path} or generator settings (task, n_jets, seed, ...)
    sweep: SweepSpec
    pretrain: dict[str, Any]  # PretrainConfig fields over the sweep's fixed fields and best parameters
    arms: tuple[str, ...]
    baselines: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    downstream: dict[str, Any]  # DownstreamConfig fields of every probe / finetune / scratch run
    baseline: dict[str, Any]  # BaselineConfig fields of every baseline run
    by_fraction: dict[float, dict[str, Any]] = field(default_factory=dict)  # per labelled fraction
    description: str = ""

    @property
    def experiment(self) -> str:
        """The sweep's experiment: the pipeline's runs nest under one parent there."""
        return self.sweep.experiment


def load_pipeline_spec(path: str | Path) -> PipelineSpec:
    """Read and validate a pipeline YAML; raises :class:`PipelineSpecError` (one line) on any problem."""
    path = Path(path)
    raw, text = read_yaml(path, "pipeline", PipelineSpecError)
    return parse_pipeline_spec(raw, path=path, text=text)


def parse_pipeline_spec(raw: Any, *, path: Path, text: str = "") -> PipelineSpec:
    def fail(key: str, message: str) -> PipelineSpecError:
        return PipelineSpecError(f"{path}: {key}: {message}")

    if not isinstance(raw, dict):
        raise PipelineSpecError(f"{path}: the pipeline file must be a mapping of keys ({', '.join(TOP_KEYS)})")
    check_keys(raw, TOP_KEYS, "", fail)
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise fail("name", "must be a non-empty string")
    sweep = _sweep(raw.get("sweep"), path, fail)
    pretrain = config_fields(mapping(raw, "pretrain", fail), PretrainConfig, PIPELINE_OWNED + SPLIT_OWNED,
                             "pretrain", fail, owner="the pipeline")
    downstream = config_fields(mapping(raw, "downstream", fail), DownstreamConfig, PIPELINE_OWNED + SPLIT_OWNED,
                               "downstream", fail, owner="the pipeline")
    baselines = parse_names(raw.get("baselines", list(BASELINES)), BASELINES, "baselines", fail)
    baseline = baseline_fields(mapping(raw, "baseline", fail), fail) if baselines else {}
    fractions = tuple(parse_fraction(v, f"fractions[{i}]", fail)
                      for i, v in enumerate(nonempty_list(raw, "fractions", [0.01, 0.1, 1.0], fail)))
    seeds = tuple(integer(v, f"seeds[{i}]", fail, minimum=0)
                  for i, v in enumerate(nonempty_list(raw, "seeds", [0, 1, 2], fail)))
    if len(set(fractions)) != len(fractions) or len(set(seeds)) != len(seeds):
        raise fail("fractions" if len(set(fractions)) != len(fractions) else "seeds", "has duplicates")
    by_fraction = parse_by_fraction(mapping(raw, "by_fraction", fail), fractions, bool(baselines), fail)
    # The configs' own checks on what the runs will be built from (the long pretraining starts
    # from the sweep's fixed fields; its best parameters were checked with the sweep file).
    check_config(PretrainConfig, {**sweep.fixed, **pretrain}, "pretrain", fail)
    check_config(DownstreamConfig, {**downstream, "arm": "scratch"}, "downstream", fail)
    if baselines:
        from mae_tracker.baselines import BaselineConfig

        check_config(BaselineConfig, baseline, "baseline", fail)
    arms = parse_names(raw.get("arms", list(DOWNSTREAM_ARMS)), DOWNSTREAM_ARMS, "arms", fail)
    return PipelineSpec(path=path, text=text, name=name.strip(), data=parse_data(raw.get("data"), path, fail),
                     sweep=sweep, pretrain=pretrain, arms=arms,
                     baselines=baselines, fractions=fractions, seeds=seeds, downstream=downstream,
                     baseline=baseline, by_fraction=by_fraction, description=str(raw.get("description", "")))


def _sweep(raw: Any, path: Path, fail: Fail) -> SweepSpec:
    """The sweep YAML, relative to the pipeline file; its problems keep the sweep file's name."""
    if not isinstance(raw, str) or not raw:
        raise fail("sweep", "must name a sweep YAML file (relative to this file), e.g. pipeline-qg-sweep.yaml")
    sweep_path = (path.parent / raw) if not Path(raw).is_absolute() else Path(raw)
    if not sweep_path.exists():
        raise fail("sweep", f"no such sweep file: {sweep_path}")
    return load_spec(sweep_path)


def parse_data(raw: Any, path: Path, fail: Fail) -> dict[str, Any]:
    if not isinstance(raw, dict) or not raw:
        raise fail("data", "must be {file: PATH} (a file, folder, glob or list) or generator settings "
                          "{task, n_jets, seed, preset, ...}")
    check_keys(raw, DATA_KEYS, "data.", fail)
    if "file" in raw:
        if len(raw) > 1:
            raise fail("data.file", "give either a file or generator settings, not both")
        from mae_tracker.data.files import absolute_spec

        entries = raw["file"] if isinstance(raw["file"], list) else [raw["file"]]  # files, folders, globs
        if not entries or not all(isinstance(e, (str, Path)) and str(e).strip() for e in entries):
            raise fail("data.file", "must be a path, folder or glob, or a list of them")
        return {"file": absolute_spec([str(e) for e in entries], base=path.parent)}  # relative to this file
    settings = dict(raw)
    settings.setdefault("task", "quark-gluon")
    integer(settings.get("n_jets", 0), "data.n_jets", fail, minimum=2)
    from mae_tracker.sim.generate import make_config

    try:
        make_config(**settings)  # the generator's own checks, now rather than after the sweep
    except (ValueError, TypeError) as err:
        raise fail("data", str(err)) from None
    return settings


def parse_names(raw: Any, allowed: tuple[str, ...], key: str, fail: Fail) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or any(v not in allowed for v in raw) or len(set(raw)) != len(raw):
        raise fail(key, f"must be a list of distinct names from {', '.join(allowed)}, got {raw!r}")
    return tuple(raw)


def nonempty_list(raw: dict[str, Any], key: str, default: list[Any], fail: Fail) -> list[Any]:
    value = raw.get(key, default)
    if not isinstance(value, list) or not value:
        raise fail(key, f"must be a non-empty list, got {value!r}")
    return value


def parse_fraction(value: Any, key: str, fail: Fail) -> float:
    value = float(number(value, key, fail))
    if not 0.0 < value <= 1.0:
        raise fail(key, f"must be in (0, 1], got {value}")
    return value


def baseline_fields(values: dict[str, Any], fail: Fail) -> dict[str, Any]:
    from mae_tracker.baselines import BaselineConfig

    return config_fields(values, BaselineConfig, PIPELINE_OWNED + SPLIT_OWNED, "baseline", fail, owner="the pipeline")


def parse_by_fraction(raw: dict[Any, Any], fractions: tuple[float, ...], with_baselines: bool, fail: Fail
                 ) -> dict[float, dict[str, Any]]:
    """Fields for every run at one labelled fraction (e.g. more epochs for 1 % of the labels)."""
    from dataclasses import fields as dataclass_fields

    allowed = {f.name: f.type for f in dataclass_fields(DownstreamConfig)}
    if with_baselines:
        from mae_tracker.baselines import BaselineConfig

        allowed.update({f.name: f.type for f in dataclass_fields(BaselineConfig)})
    result: dict[float, dict[str, Any]] = {}
    for key, values in raw.items():
        fraction = parse_fraction(key, f"by_fraction.{key}", fail)
        if fraction not in fractions:
            raise fail(f"by_fraction.{key}", f"is not one of the fractions {list(fractions)}")
        if not isinstance(values, dict):
            raise fail(f"by_fraction.{key}", "must be a mapping of config fields")
        for name, value in values.items():
            if name not in allowed or name in PIPELINE_OWNED + SPLIT_OWNED:
                raise fail(f"by_fraction.{key}.{name}", "not a field a pipeline may set per fraction")
            if allowed[name] == "float":
                values[name] = float(number(value, f"by_fraction.{key}.{name}", fail))
            elif allowed[name] == "int":
                integer(value, f"by_fraction.{key}.{name}", fail, minimum=0)
            problem = out_of_bounds(name, values[name])
            if problem:
                raise fail(f"by_fraction.{key}.{name}", problem)
        result[fraction] = dict(values)
    return result
