"""BaselineConfig: what a classical-baseline run is, and exactly what it logs."""

from __future__ import annotations

from dataclasses import dataclass, field

from mae_tracker.train.config import CommonConfig

BASELINES = ("observable", "gbdt", "cnn")  # the classical baselines, defined here once

# The CNN's preprocessing when the config leaves it empty: measured (docs/field-notes.md, default data,
# 3,000 jets) a 3-layer CNN reaches 0.835 on log1p, per-channel-scaled images vs 0.808 with the
# seed recipe's per-sample min-max, which throws away each jet's absolute scale.
CNN_PIXEL_OPTIONS = {"pixel_transform": "log1p", "pixel_scaling": "channel"}


@dataclass
class BaselineConfig(CommonConfig):
    """A classical baseline on the arms' split and labelled subset, scored on the same test jets.

    The split and subset fields (split_seed, *_fraction, label_fraction, seed) mean what they
    mean for the arms; the encoder fields (variant, patch_size, ...) are unused. epochs,
    batch_size, lr, weight_decay, warmup_epochs and dropout drive the CNN only.
    """

    kind: str = field(default="gbdt", metadata={
        "help": "'observable' (best single image observable, by val AUC), 'gbdt' (gradient boosting on the "
                "observables) or 'cnn' (small CNN on the images)."})
    label_fraction: float = field(default=1.0, metadata={"help": "Fraction of the labelled train split used."})
    # CNN schedule and regularisation, chosen on val AUC (default data, 3,000 jets, split_seed 0): at
    # lr 1e-3, weight decay 0.05, no dropout, 25 epochs the train loss reaches ~0 and val AUC falls
    # from 0.833 (epoch 3) to 0.79; lr 5e-4, weight decay 0.5, dropout 0.5 over 10 epochs holds val
    # AUC at 0.840 to the end (25 epochs of it: 0.839, then decays).
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.5
    cnn_channels: str = field(default="32,64,64", metadata={
        "help": "CNN: output channels of the conv blocks (3x3 conv + ReLU + 2x2 max-pool each)."})
    cnn_hidden: int = field(default=128, metadata={"help": "CNN: width of the dense layer before the logit."})
    dropout: float = field(default=0.5, metadata={"help": "CNN: dropout before the logit."})
    gbdt_learning_rate: float = 0.1
    gbdt_max_iter: int = field(default=1000, metadata={"help": "GBDT: most boosting rounds (early stop on val)."})
    gbdt_max_leaf_nodes: int = 15
    gbdt_min_samples_leaf: int = 20
    gbdt_patience: int = field(default=30, metadata={
        "help": "GBDT: stop after this many rounds without a better val loss."})

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        if self.kind not in BASELINES:
            raise ValueError(f"kind must be one of {BASELINES}, got {self.kind!r}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        try:
            channels = self.conv_channels()
        except ValueError:
            channels = ()
        if not channels or min(channels) < 1:
            raise ValueError(f"cnn_channels must be positive integers separated by commas, got {self.cnn_channels!r}")

    def conv_channels(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.cnn_channels.split(",") if part.strip())

    def display_name(self) -> str:
        """A run name a person can read in the MLflow UI: kind, labels, (lr), seed."""
        lr = f"-lr{self.lr:g}" if self.kind == "cnn" else ""
        return f"{self.kind}-labels{self.label_fraction:g}{lr}-seed{self.seed}"
