"""A scaling study's YAML file -> a validated :class:`ScalingSpec`.

The scaling study asks where MAE pretraining would pay off: the same encoder recipe pretrained on
nested subsets of ONE dataset's pretraining split (``pretrain_jets``, via the pretrain config's
``max_jets``), for each encoder size, then probe / finetune at small labelled fractions of ONE fixed
labelled set, beside classical baselines on the same labels. Everything is checked here, before any
data or run exists; each problem is one line naming the file and key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mae_tracker.baselines.config import BASELINES
from mae_tracker.pipeline.spec import (PIPELINE_OWNED, PipelineSpecError, baseline_fields, nonempty_list,
                                       parse_by_fraction, parse_data, parse_fraction, parse_names)
from mae_tracker.sweep.checks import Fail, check_config, check_keys, config_fields, integer, mapping, number, read_yaml
from mae_tracker.sweep.spec import SPLIT_FIELDS
from mae_tracker.train.config import DOWNSTREAM_ARMS, DownstreamConfig, PretrainConfig

TOP_KEYS = ("name", "description", "experiment", "data", "split", "pretrain_jets", "encoders", "pretrain", "arms",
            "baselines", "fractions", "seeds", "downstream", "baseline", "by_fraction", "fit")
FIT_KEYS = ("c", "bootstrap", "seed")
# Set by the study for every run (the encoder per `encoders`, the size per `pretrain_jets`).
OWNED = PIPELINE_OWNED + ("max_jets",)


class ScalingSpecError(PipelineSpecError):
    """A problem in a scaling-study YAML: one line, naming the file and the key."""


@dataclass(frozen=True)
class ScalingSpec:
    """A validated scaling study: data, split, sizes x encoders, and the downstream grid."""

    path: Path
    text: str  # the YAML as written, logged on the study's parent run as scaling.yaml
    name: str
    experiment: str
    data: dict[str, Any]  # {"file": path} or generator settings, as a pipeline file's `data`
    split: dict[str, Any]  # split_seed and *_fraction: one split for every run
    pretrain_jets: tuple[int, ...]  # increasing
    encoders: dict[str, dict[str, Any]]  # label -> PretrainConfig fields (variant, depth, ...)
    pretrain: dict[str, Any]  # PretrainConfig fields of every pretraining
    arms: tuple[str, ...]
    baselines: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    downstream: dict[str, Any]
    baseline: dict[str, Any]
    by_fraction: dict[float, dict[str, Any]] = field(default_factory=dict)
    fit_c: float = 0.5  # exponent held fixed when the sizes cannot determine it (3 or fewer)
    bootstrap: int = 300  # resamplings of the seeds for the fit's uncertainty
    fit_seed: int = 0
    description: str = ""

    def pretrain_settings(self, encoder: str, jets: int) -> dict[str, Any]:
        """PretrainConfig fields of the pretraining of ``encoder`` on the first ``jets`` pretraining jets."""
        return {**self.pretrain, **self.encoders[encoder], **self.split, "max_jets": jets,
                "experiment": self.experiment, "run_name": f"{self.name}-pretrain-{encoder}-{jets}"}


def load_scaling_spec(path: str | Path) -> ScalingSpec:
    """Read and validate a scaling-study YAML; raises :class:`ScalingSpecError` (one line) on any problem."""
    path = Path(path)
    raw, text = read_yaml(path, "scaling study", ScalingSpecError)
    return parse_scaling_spec(raw, path=path, text=text)


def parse_scaling_spec(raw: Any, *, path: Path, text: str = "") -> ScalingSpec:
    def fail(key: str, message: str) -> ScalingSpecError:
        return ScalingSpecError(f"{path}: {key}: {message}")

    if not isinstance(raw, dict):
        raise ScalingSpecError(f"{path}: the scaling file must be a mapping of keys ({', '.join(TOP_KEYS)})")
    check_keys(raw, TOP_KEYS, "", fail)
    name, experiment = (_text(raw, key, default, fail) for key, default in (("name", path.stem),
                                                                            ("experiment", "mae-tracker-scaling")))
    data = parse_data(raw.get("data"), path, fail)
    split = _split(mapping(raw, "split", fail), fail)
    sizes = _sizes(nonempty_list(raw, "pretrain_jets", [], fail), data, split, fail)
    pretrain = config_fields(mapping(raw, "pretrain", fail), PretrainConfig, OWNED + SPLIT_FIELDS, "pretrain", fail,
                             owner="the scaling study")
    encoders = _encoders(raw.get("encoders"), pretrain, fail)
    arms = parse_names(raw.get("arms", ["probe", "finetune"]), DOWNSTREAM_ARMS, "arms", fail)
    if not arms:
        raise fail("arms", "must name at least one of " + ", ".join(DOWNSTREAM_ARMS))
    baselines = parse_names(raw.get("baselines", ["cnn", "gbdt"]), BASELINES, "baselines", fail)
    downstream = config_fields(mapping(raw, "downstream", fail), DownstreamConfig, OWNED + SPLIT_FIELDS, "downstream",
                               fail, owner="the scaling study")
    check_config(DownstreamConfig, {**downstream, "arm": "scratch"}, "downstream", fail)
    baseline = baseline_fields(mapping(raw, "baseline", fail), fail) if baselines else {}
    fractions = tuple(parse_fraction(v, f"fractions[{i}]", fail)
                      for i, v in enumerate(nonempty_list(raw, "fractions", [0.01, 0.1], fail)))
    seeds = tuple(integer(v, f"seeds[{i}]", fail, minimum=0)
                  for i, v in enumerate(nonempty_list(raw, "seeds", [0, 1, 2], fail)))
    for key, values in (("fractions", fractions), ("seeds", seeds)):
        if len(set(values)) != len(values):
            raise fail(key, "has duplicates")
    by_fraction = parse_by_fraction(mapping(raw, "by_fraction", fail), fractions, bool(baselines), fail)
    fit = mapping(raw, "fit", fail)
    check_keys(fit, FIT_KEYS, "fit.", fail)
    fit_c = float(number(fit.get("c", 0.5), "fit.c", fail))
    if not 0.0 < fit_c <= 5.0:
        raise fail("fit.c", f"must be in (0, 5], got {fit_c}")
    return ScalingSpec(path=path, text=text, name=name, experiment=experiment, data=data, split=split,
                       pretrain_jets=sizes, encoders=encoders, pretrain=pretrain, arms=arms, baselines=baselines,
                       fractions=fractions, seeds=seeds, downstream=downstream, baseline=baseline,
                       by_fraction=by_fraction, fit_c=fit_c,
                       bootstrap=integer(fit.get("bootstrap", 300), "fit.bootstrap", fail, minimum=0),
                       fit_seed=integer(fit.get("seed", 0), "fit.seed", fail, minimum=0),
                       description=str(raw.get("description", "")))


def _text(raw: dict[str, Any], key: str, default: str, fail: Fail) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value.strip() or "'" in value:
        raise fail(key, "must be a non-empty string without quotes")
    return value.strip()


def _split(raw: dict[str, Any], fail: Fail) -> dict[str, Any]:
    """One split for every run: the pretraining sizes are nested subsets of its pretraining part
    and every downstream run uses its labelled train, validation and test parts."""
    check_keys(raw, tuple(SPLIT_FIELDS), "split.", fail)
    split = {}
    for key, value in raw.items():
        if key == "split_seed":
            split[key] = integer(value, "split.split_seed", fail, minimum=0)
        else:
            split[key] = float(number(value, f"split.{key}", fail))
            if not 0.0 <= split[key] <= 1.0:
                raise fail(f"split.{key}", f"must be in [0, 1], got {split[key]}")
    check_config(PretrainConfig, split, "split", fail)
    total = sum(v for k, v in {**_default_fractions(), **split}.items() if k.endswith("_fraction"))
    if total > 1.0 + 1e-9:
        raise fail("split", f"the fractions sum to {total:g} > 1")
    return split


def _default_fractions() -> dict[str, float]:
    config = PretrainConfig()
    return {name: getattr(config, name) for name in SPLIT_FIELDS if name.endswith("_fraction")}


def _sizes(raw: list[Any], data: dict[str, Any], split: dict[str, Any], fail: Fail) -> tuple[int, ...]:
    sizes = tuple(integer(v, f"pretrain_jets[{i}]", fail, minimum=1) for i, v in enumerate(raw))
    if len(sizes) < 2 or list(sizes) != sorted(set(sizes)):
        raise fail("pretrain_jets", f"must be at least two increasing sizes, got {list(sizes)}")
    if "n_jets" in data:  # generated data: the largest size must fit its pretraining split
        fraction = split.get("pretrain_fraction", _default_fractions()["pretrain_fraction"])
        available = int(round(data["n_jets"] * fraction))
        if sizes[-1] > available:
            raise fail(f"pretrain_jets[{len(sizes) - 1}]", f"{sizes[-1]} jets, but data.n_jets {data['n_jets']} x "
                                                           f"pretrain_fraction {fraction:g} gives {available}")
    return sizes


def _encoders(raw: Any, pretrain: dict[str, Any], fail: Fail) -> dict[str, dict[str, Any]]:
    """label -> PretrainConfig fields over `pretrain` (at least `variant`), e.g. {vit-nano: {variant: vit-nano}}."""
    if not isinstance(raw, dict) or not raw:
        raise fail("encoders", "must map a label to PretrainConfig fields, e.g. {vit-nano: {variant: vit-nano}}")
    encoders = {}
    for label, fields in raw.items():
        if not isinstance(label, str) or not label or "'" in label or not isinstance(fields, dict):
            raise fail(f"encoders.{label}", "must be a label mapped to PretrainConfig fields (variant, depth, ...)")
        checked = config_fields(dict(fields), PretrainConfig, OWNED + SPLIT_FIELDS, f"encoders.{label}", fail,
                                owner="the scaling study")
        check_config(PretrainConfig, {**pretrain, **checked}, f"encoders.{label}", fail)
        encoders[label] = checked
    return encoders


__all__ = ["ScalingSpec", "ScalingSpecError", "load_scaling_spec", "parse_scaling_spec"]
