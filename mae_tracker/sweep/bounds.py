"""Allowed ranges of the numeric config fields a sweep or study file may set or search.

The config dataclasses check some of these when a run starts (mask_ratio, label_fraction,
the occupied weights), others only fail deep inside a run (a negative depth, zero epochs).
A sweep or study file is checked against this table before anything is written, the same
for a fixed value, a searched range's ``min`` and ``max``, and each listed value, and then
the config itself is built from it so that its own checks run too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bound:
    """``low`` <= value <= ``high`` (strict where ``*_open``); None = unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    note: str = ""

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def text(self, name: str) -> str:
        """``0 < mask_ratio < 1``, ``depth >= 0 (0 = the variant's)``."""
        low = "<" if self.low_open else "<="
        high = "<" if self.high_open else "<="
        if self.low is not None and self.high is not None:
            text = f"{self.low:g} {low} {name} {high} {self.high:g}"
        elif self.low is not None:
            text = f"{name} {'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = f"{name} {high} {self.high:g}" if self.high is not None else name
        return text + (f" ({self.note})" if self.note else "")


UNIT = Bound(0.0, 1.0)
AT_LEAST_ONE = Bound(1)
NON_NEGATIVE = Bound(0)
POSITIVE = Bound(0, low_open=True)
VARIANT_DEFAULT = Bound(0, note="0 = the variant's")

FIELD_BOUNDS: dict[str, Bound] = {
    # CommonConfig
    "split_seed": NON_NEGATIVE, "seed": NON_NEGATIVE,
    "pretrain_fraction": UNIT, "train_fraction": UNIT, "val_fraction": UNIT, "test_fraction": UNIT,
    "patch_size": VARIANT_DEFAULT, "depth": VARIANT_DEFAULT, "embed_dim": VARIANT_DEFAULT,
    "num_heads": VARIANT_DEFAULT, "epochs": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE, "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE, "warmup_epochs": NON_NEGATIVE, "num_threads": Bound(0, note="0 = torch's default"),
    "loader_workers": NON_NEGATIVE, "log_every_steps": AT_LEAST_ONE,
    # PretrainConfig
    "mask_ratio": Bound(0.0, 1.0, low_open=True, high_open=True),
    "occupied_pixel_weight": Bound(0, low_open=True, note="1 = off"),
    "occupied_patch_weight": Bound(0, low_open=True, note="1 = off"),
    "decoder_dim": VARIANT_DEFAULT, "decoder_depth": VARIANT_DEFAULT, "decoder_heads": VARIANT_DEFAULT,
    "max_jets": Bound(0, note="0 = the whole split"), "eval_jets": NON_NEGATIVE,
    "image_every": Bound(0, note="0 = the last epoch only"), "image_jets": NON_NEGATIVE,
    "probe_train_jets": Bound(0, note="0 = off"), "probe_val_jets": Bound(0, note="0 = off"),
    # DownstreamConfig and BaselineConfig
    "label_fraction": Bound(0.0, 1.0, low_open=True), "layer_decay": Bound(0, low_open=True, note="1 = off"),
    "dropout": Bound(0.0, 1.0, high_open=True), "cnn_hidden": AT_LEAST_ONE, "gbdt_learning_rate": POSITIVE,
    "gbdt_max_iter": AT_LEAST_ONE, "gbdt_max_leaf_nodes": Bound(2), "gbdt_min_samples_leaf": AT_LEAST_ONE,
    "gbdt_patience": AT_LEAST_ONE,
}


def out_of_bounds(field: str, value: Any) -> str:
    """'' when ``value`` is allowed for ``field`` (or the field has no numeric range), else
    the problem as ``1.5 is outside the allowed range: 0 < mask_ratio < 1``."""
    bound = FIELD_BOUNDS.get(field)
    if bound is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    if bound.contains(float(value)):
        return ""
    return f"{value!r} is outside the allowed range: {bound.text(field)}"
