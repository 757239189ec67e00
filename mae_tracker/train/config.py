"""Run configurations: one dataclass per kind of run, and it is exactly what gets logged.

Every field is a plain scalar so that the config maps one-to-one onto CLI options,
MLproject parameters and MLflow params.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

# The four arms, defined here once: the downstream arms train a classifier, and those of them
# that start from a pretrained encoder need its URI.
DOWNSTREAM_ARMS = ("finetune", "probe", "scratch")
ENCODER_ARMS = ("finetune", "probe")
ARMS = ("pretrain", *DOWNSTREAM_ARMS)
# What an empty pixel_transform / pixel_scaling means without an encoder to inherit from: the best
# recipe measured, log1p + per-channel scaling (docs/results.md: default pipeline, 3 seeds, test AUC
# 0.851 +- 0.005 against 0.783 +- 0.004 with the reference recipe, the same pretrain cost).
DEFAULT_PIXEL_OPTIONS = {"pixel_transform": "log1p", "pixel_scaling": "channel"}
# The reference work's recipe (per-jet min-max), one option away: `--pixel-scaling sample-minmax`
# (an empty transform then means none, as in the reference work).
REFERENCE_PIXEL_OPTIONS = {"pixel_transform": "none", "pixel_scaling": "sample-minmax"}


@dataclass
class CommonConfig:
    """Fields shared by every arm, so that runs are comparable run for run."""

    data: str = field(default="", metadata={
        "help": "Jet images: an HDF5 or Parquet file, a folder, a glob or a comma-separated list of files; "
                "empty = the data the --encoder-uri encoder was pretrained on (checked by its digest), else the "
                "default generated dataset."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the pretrain/train/val/test split."})
    pretrain_fraction: float = 0.5
    train_fraction: float = 0.3
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    pixel_transform: str = field(default="", metadata={
        "help": "Before scaling: 'none' or 'log1p' of the zero-suppressed pixel; '' = the encoder's "
                "(downstream with an encoder), else 'log1p' ('none' with --pixel-scaling sample-minmax)."})
    pixel_scaling: str = field(default="", metadata={
        "help": "'sample-minmax' (reference: z-score, clip, per-jet min-max) or 'channel' (divide by the "
                "train split's channel std, empty pixels stay 0); '' = the encoder's, else 'channel'."})
    variant: str = field(default="vit-nano", metadata={"help": "Encoder variant (see mae_tracker.models.variants)."})
    patch_size: int = field(default=0, metadata={"help": "Patch size; 0 = the variant's default."})
    depth: int = field(default=0, metadata={"help": "Encoder depth override; 0 = the variant's."})
    embed_dim: int = field(default=0, metadata={"help": "Encoder width override; 0 = the variant's."})
    num_heads: int = field(default=0, metadata={"help": "Attention heads override; 0 = the variant's."})
    epochs: int = 10
    batch_size: int = field(default=128, metadata={
        "help": "Batch per process; under torchrun the global batch is batch_size x WORLD_SIZE."})
    lr: float = field(default=1e-3, metadata={"help": "Peak learning rate (see lr_scaling)."})
    lr_scaling: str = field(default="none", metadata={
        "help": "'none': lr as given; 'linear': the MAE rule, lr x global batch / 256."})
    weight_decay: float = 0.05
    warmup_epochs: float = field(default=1.0, metadata={"help": "Linear warm-up, then cosine decay to 0."})
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA if present), 'cpu' or 'cuda[:N]'."})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads; 0 = torch's default."})
    loader_workers: int = field(default=1, metadata={
        "help": "Background threads reading + preprocessing the next batches; 0 = on the training thread. "
                "Same batches in the same order either way."})
    loader_processes: bool = field(default=False, metadata={
        "help": "Loader workers as processes, each with its own HDF5 handle (h5py lets one thread decompress "
                "at a time): for 125x125 images on a machine with cores to spare. Same batches either way."})
    sparse_copy: bool = field(default=False, metadata={
        "help": "Read images from a sparse copy of the file (non-zero pixels only, memory-mapped), built once "
                "per file content in the cache dir: ~19x faster than lzf for 125x125 images. Same numbers."})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the training forward (worth it on GPUs; on CPU no gain, ~40 s first step)."})
    bf16: bool = field(default=True, metadata={
        "help": "bf16 autocast on CUDA GPUs that support it; never on CPU (13-18x slower there)."})
    log_every_steps: int = field(default=50, metadata={"help": "Step-level loss logging interval (batched)."})
    experiment: str = field(default="mae-tracker", metadata={"help": "MLflow experiment (ignored under `mlflow run`)."})
    run_name: str = ""
    checkpoint_dir: str = field(default="", metadata={"help": "Where epoch checkpoints go; empty = cache dir."})
    resume: str = field(default="", metadata={"help": "Run id of an interrupted run to continue."})

    def __post_init__(self) -> None:
        if self.pixel_transform or self.pixel_scaling:  # imported only when set: keeps `--help` light
            from mae_tracker.data.preprocess import check_pixel_options

            resolved = resolve_pixel_options(self)
            check_pixel_options(resolved.pixel_transform, resolved.pixel_scaling)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CommonConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**values)


@dataclass
class PretrainConfig(CommonConfig):
    """Masked-autoencoder pretraining on the unlabelled split."""

    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    occupied_pixel_weight: float = field(default=1.0, metadata={
        "help": "Reconstruction loss weight of occupied target pixels (input > 0) vs empty ones; 1 = plain MSE."})
    occupied_patch_weight: float = field(default=1.0, metadata={
        "help": "Masking weight of patches with any occupied pixel vs empty ones (same mask count); "
                "1 = uniform random masking."})
    decoder_dim: int = field(default=0, metadata={"help": "Decoder width; 0 = the variant's."})
    decoder_depth: int = field(default=0, metadata={"help": "Decoder depth; 0 = the variant's."})
    decoder_heads: int = field(default=0, metadata={"help": "Decoder heads; 0 = the variant's."})
    max_jets: int = field(default=0, metadata={
        "help": "Cap on pretraining jets: the pretrain split's first N jets in the dataset's jet order (files by "
                "sha256, then row); 0 = the whole split."})
    eval_jets: int = field(default=2048, metadata={"help": "Test-split jets for the per-epoch reconstruction loss."})
    image_every: int = field(default=5, metadata={"help": "Log reconstruction grids every N epochs (and the last)."})
    image_jets: int = field(default=8, metadata={"help": "Jets per reconstruction grid (one train, one test)."})
    image_scale: str = field(default="log", metadata={
        "help": "Colour scale of the grids: 'log' (4 decades below the hottest pixel) or 'linear'."})
    # 256 + 256 jets keep the online probe at ~4 % of a default epoch (measured: 1000 + 1000
    # cost ~20 %, 512 + 512 ~11 %); larger sets give a steadier, higher AUC (sweeps may set them).
    probe_train_jets: int = field(default=256, metadata={
        "help": "Labelled train-split jets for the per-epoch linear probe (val_probe_auc); 0 = off."})
    probe_val_jets: int = field(default=256, metadata={
        "help": "Validation jets the per-epoch linear probe is scored on; 0 = off."})
    register_as: str = field(default="", metadata={"help": "Register the encoder under this model name."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.image_scale not in ("log", "linear"):
            raise ValueError(f"image_scale must be 'log' or 'linear', got {self.image_scale!r}")
        if (self.occupied_pixel_weight, self.occupied_patch_weight) != (1.0, 1.0):
            from mae_tracker.models.variants import check_occupied_weights

            check_occupied_weights(self.occupied_pixel_weight, self.occupied_patch_weight)

    def display_name(self) -> str:
        """A run name a person can read in the MLflow UI: arm, variant, the settings that matter."""
        depth = f"-depth{self.depth}" if self.depth else ""
        # The pixel and occupancy options only when they differ from the defaults.
        pixels = resolve_pixel_options(self)
        sparse = "".join(part for part, on in (
            (f"-{pixels.pixel_transform}", pixels.pixel_transform != DEFAULT_PIXEL_OPTIONS["pixel_transform"]),
            (f"-{pixels.pixel_scaling}", pixels.pixel_scaling != DEFAULT_PIXEL_OPTIONS["pixel_scaling"]),
            (f"-pixw{self.occupied_pixel_weight:g}", self.occupied_pixel_weight != 1.0),
            (f"-patchw{self.occupied_patch_weight:g}", self.occupied_patch_weight != 1.0)) if on)
        return f"pretrain-{self.variant}{depth}-mask{self.mask_ratio:g}{sparse}-lr{self.lr:g}-seed{self.seed}"


@dataclass
class DownstreamConfig(CommonConfig):
    """Quark/gluon classification: finetune, probe (frozen encoder) or scratch."""

    arm: str = "finetune"
    encoder_uri: str = field(default="", metadata={
        "help": "Pretrained encoder: runs:/<id>/encoder or models:/<name>@<alias> (scratch: optional, "
                "only its architecture is used)."})
    label_fraction: float = field(default=1.0, metadata={"help": "Fraction of the labelled train split used."})
    layer_decay: float = field(default=1.0, metadata={
        "help": "Layer-wise lr decay: block i of D trains at lr * layer_decay ** (D + 1 - i); 1 = off."})
    pool: str = field(default="mean", metadata={"help": "Token pooling for the head: 'mean' or 'cls'."})
    dropout: float = 0.0
    val_jets: int = field(default=0, metadata={
        "help": "Validation jets scored each epoch for model selection (the first N of the seeded validation "
                "split); 0 = all. The test jets are always all scored."})
    patience: int = field(default=0, metadata={
        "help": "Stop when the validation log-loss has not improved for this many epochs (the best epoch is "
                "kept either way); 0 = train every epoch."})

    def display_name(self) -> str:
        """A run name a person can read in the MLflow UI: arm, variant, labels, seed."""
        return f"{self.arm}-{self.variant}-labels{self.label_fraction:g}-lr{self.lr:g}-seed{self.seed}"

    @classmethod
    def for_arm(cls, arm: str, **overrides: Any) -> "DownstreamConfig":
        """The arm's defaults (see ARM_DEFAULTS) with ``overrides`` on top."""
        return cls(arm=arm, **{**ARM_DEFAULTS.get(arm, {}), **overrides})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.arm not in DOWNSTREAM_ARMS:
            raise ValueError(f"arm must be one of {DOWNSTREAM_ARMS}, got {self.arm!r}")
        if self.val_jets < 0 or self.patience < 0:
            raise ValueError(f"val_jets and patience must be >= 0, got {self.val_jets} and {self.patience}")
        if not 0.0 < self.label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {self.label_fraction}")
        if self.arm in ENCODER_ARMS and not self.encoder_uri and not self.resume:
            raise ValueError(f"{self.arm} needs an encoder_uri (runs:/<run_id>/encoder or models:/<name>@<alias>)")


ConfigT = TypeVar("ConfigT", bound=CommonConfig)


def resolve_pixel_options(config: ConfigT, defaults: dict[str, str] | None = None) -> ConfigT:
    """``config`` with empty pixel_transform / pixel_scaling filled from ``defaults`` (default: the
    best measured recipe, or the reference recipe when the scaling asked for is the reference's
    per-jet min-max), so the config that gets logged says what the run really did."""
    if defaults is None:
        reference = config.pixel_scaling == REFERENCE_PIXEL_OPTIONS["pixel_scaling"]
        defaults = REFERENCE_PIXEL_OPTIONS if reference else DEFAULT_PIXEL_OPTIONS
    changes = {name: defaults[name] for name in DEFAULT_PIXEL_OPTIONS if not getattr(config, name)}
    return dataclasses.replace(config, **changes) if changes else config


# Defaults per downstream arm, for the CPU-sized budget (10 epochs of a few thousand jets).
# Finetuning starts from pretrained weights and uses a lower learning rate than training
# from scratch (the reference work fine-tuned at 1.5e-4 for far longer). Measured on the
# default dataset: scratch at 1e-3 and finetune at 2e-4 barely leave the chance-level loss in
# 230 steps; 3e-3 / 1e-3 reach test AUC 0.77 / 0.75. The linear probe (BatchNorm + Linear on
# frozen features) underfit at 3e-3 x 10 epochs: on one encoder's features of 3,000 labelled
# jets it reached val AUC 0.764 where a converged logistic regression reaches 0.817; 0.1 x 30
# epochs reaches 0.815 (MAE probes with lr 0.1 too). Its epochs cost one encoder pass in all
# (train/features.py), so 30 are cheap.
ARM_DEFAULTS: dict[str, dict[str, Any]] = {
    "finetune": {"lr": 1e-3, "epochs": 10},
    "probe": {"lr": 0.1, "epochs": 30, "weight_decay": 0.0},
    "scratch": {"lr": 3e-3, "epochs": 10},
}
