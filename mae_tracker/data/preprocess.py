"""Jet-image preprocessing, fitted on the training split only.

Steps, in order (the same for numpy and torch inputs, computed in float32):

1. zero suppression: pixels below ``zero_threshold`` (1e-3) become 0 (detector noise floor);
2. ``pixel_transform``: "none" (the reference recipe) or "log1p" (energies span decades; the
   statistics below are then those of log1p(pixel));
3. ``pixel_scaling`` "sample-minmax" (the reference work's recipe, the default):
   a. channel-wise z-score with the training split's mean/std (channels differ by orders of
      magnitude: track pT vs calorimeter energy);
   b. clip at +-``clip_sigma`` (500) standard deviations (a few extreme pixels must not dominate);
   c. per-sample, per-channel min-max scaling to [0, 1]; a channel that is constant within a
      sample (e.g. no tracks at all) becomes all zeros instead of 0/0 = NaN.
   ``pixel_scaling`` "channel": divide by the training split's channel std and clip to
   [0, clip_sigma]. No mean subtraction, so empty pixels stay exactly 0, and no per-sample
   min-max, so each jet keeps its absolute scale (min-max throws that physics away).

The fitted object is a few numbers; ``to_dict``/``from_dict`` let it travel (as JSON) with every
logged model so that inference applies exactly the same transform.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
FORMAT = "mae-tracker-preprocessor/1"  # dicts without the pixel_* fields load as the reference recipe
PIXEL_TRANSFORMS = ("none", "log1p")
PIXEL_SCALINGS = ("sample-minmax", "channel")


STATS_READ_BYTES = 64 * 2**20  # decoded float32 images per read while fitting


def _memory_bounded(rows: np.ndarray, reader: Any) -> list[np.ndarray]:
    """Split one statistics batch so that a read decodes at most STATS_READ_BYTES.

    4096 jets of 125x125x3 are 0.75 GB in float32; the float64 sums do not depend on how a batch
    is split, only memory does.
    """
    row_bytes = 4 * int(np.prod(reader.image_shape)) if hasattr(reader, "image_shape") else 0
    step = max(1, STATS_READ_BYTES // row_bytes) if row_bytes else len(rows)
    return [rows[i:i + step] for i in range(0, len(rows), step)]


@dataclass
class Preprocessor:
    """Fitted preprocessing: per-channel ``mean``/``std`` plus the recipe's settings."""

    mean: list[float]
    std: list[float]
    zero_threshold: float = 1e-3
    clip_sigma: float = 500.0
    stats_batch_size: int = 4096
    pixel_transform: str = "none"
    pixel_scaling: str = "sample-minmax"

    def __post_init__(self) -> None:
        check_pixel_options(self.pixel_transform, self.pixel_scaling)
        self.mean = [float(m) for m in self.mean]
        self.std = [float(s) for s in self.std]
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError(f"mean and std need one value per channel, got {len(self.mean)} and {len(self.std)}")
        if any(not np.isfinite(v) for v in self.mean + self.std) or min(self.std) < 0:
            raise ValueError(f"mean/std must be finite and std >= 0, got mean={self.mean} std={self.std}")

    @property
    def channels(self) -> int:
        return len(self.mean)

    @classmethod
    def fit(cls, reader: Any, indices: Any, *, batch_size: int = 4096, progress: bool = False,
            zero_threshold: float = 1e-3, clip_sigma: float = 500.0, pixel_transform: str = "none",
            pixel_scaling: str = "sample-minmax") -> Preprocessor:
        """Channel mean/std of zero-suppressed, ``pixel_transform``-ed pixels over ``indices``
        (pass the TRAIN split only).

        Streams batches of ``batch_size`` jets in file order and accumulates sum and sum of
        squares in float64, so the result does not depend on the batch size beyond rounding.
        ``reader`` is anything with ``read(indices) -> (images (n,C,H,W), labels)``.
        """
        check_pixel_options(pixel_transform, pixel_scaling)
        rows = np.unique(np.asarray(indices, dtype=np.int64))  # file order reads fastest
        if rows.size == 0:
            raise ValueError("cannot fit preprocessing statistics on an empty index set")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        starts = range(0, rows.size, batch_size)
        if progress:
            from mae_tracker.progress import progress_bar

            starts = progress_bar(starts, desc="preprocessing stats", unit="batch")
        total = total_sq = 0.0
        count = 0
        for start in starts:
            for part in _memory_bounded(rows[start:start + batch_size], reader):
                images, _ = reader.read(part)
                images = np.where(images < zero_threshold, np.float32(0.0), images.astype(np.float32))
                if pixel_transform == "log1p":
                    np.log1p(images, out=images)
                # float64 accumulation without float64 copies of the batch (einsum casts in buffers)
                total = total + images.sum(axis=(0, 2, 3), dtype=np.float64)
                total_sq = total_sq + np.einsum("nchw,nchw->c", images, images, dtype=np.float64)
                count += images.shape[0] * images.shape[2] * images.shape[3]
        mean = total / count
        var = np.maximum(total_sq / count - mean**2, 0.0)  # rounding can push it a hair below 0
        return cls(mean=mean.tolist(), std=np.sqrt(var).tolist(), zero_threshold=zero_threshold,
                   clip_sigma=clip_sigma, stats_batch_size=batch_size, pixel_transform=pixel_transform,
                   pixel_scaling=pixel_scaling)

    def _safe_std(self) -> np.ndarray:
        # A channel that is constant over the whole training split has std 0: divide by 1
        # instead (its z-scores are then all equal and min-max maps them to 0).
        std = np.asarray(self.std, dtype=np.float32)
        return np.where(std > 0, std, np.float32(1.0))

    def transform(self, x: ArrayT) -> ArrayT:
        """Preprocess a batch (N, C, H, W); returns the same array type, float32, new memory.

        Inputs must be finite (the reader guarantees it): torch turns NaN into 0, numpy keeps it.
        """
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected a batch (N, {self.channels}, H, W), got shape {tuple(x.shape)}")
        if isinstance(x, torch.Tensor):
            return self._transform_torch(x)
        return self._transform_numpy(np.asarray(x))

    # Both backends use the same closed form. Clipping is monotone, so a sample-channel's clipped
    # extremes come from its raw extremes, and z-score + clip + min-max collapses to
    #     out = clamp((x - x_lo) / (x_hi - x_lo), 0, 1)
    # with x_lo / x_hi = the raw min / max, pulled in to mean -/+ clip_sigma*std where they lie
    # beyond. That is the reference recipe (tests compare with a per-sample loop) in 3 passes over
    # the batch instead of ~9, and x - x_lo is exact near the minimum.

    def _bounds(self, x_min: ArrayT, x_max: ArrayT, mean: ArrayT, std: ArrayT, lib: Any) -> tuple[ArrayT, ArrayT]:
        reach = self.clip_sigma * std
        low = lib.where(x_min < mean - reach, mean - reach, x_min)
        high = lib.where(x_max > mean + reach, mean + reach, x_max)
        span = high - low
        inverse = lib.where(span > 0, 1.0 / lib.where(span > 0, span, 1.0), 0.0)  # constant -> 0
        return low, inverse

    def _transform_numpy(self, x: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = self._safe_std().reshape(1, -1, 1, 1)
        z = np.where(x < np.float32(self.zero_threshold), np.float32(0.0), x.astype(np.float32, copy=False))
        if self.pixel_transform == "log1p":
            np.log1p(z, out=z)
        if self.pixel_scaling == "channel":
            z /= std  # a division (not a reciprocal product) so numpy and torch round alike
            return np.clip(z, 0.0, self.clip_sigma, out=z)
        low, inverse = self._bounds(z.min(axis=(2, 3), keepdims=True), z.max(axis=(2, 3), keepdims=True),
                                    mean, std, np)
        z -= low.astype(np.float32)
        z *= inverse.astype(np.float32)
        return np.clip(z, 0.0, 1.0, out=z)

    def _transform_torch(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
        std = torch.from_numpy(self._safe_std()).to(x.device).reshape(1, -1, 1, 1)
        x = x.to(torch.float32)
        # threshold() keeps x > t: with t the float32 just below zero_threshold that is exactly
        # "x >= zero_threshold", like numpy's, and it is one fused pass (torch.where costs ~4x more).
        below = float(np.nextafter(np.float32(self.zero_threshold), np.float32(-np.inf)))
        z = torch.nn.functional.threshold(x, below, 0.0)  # new memory: in-place below is safe
        if self.pixel_transform == "log1p":
            z.log1p_()
        if self.pixel_scaling == "channel":
            return z.div_(std).clamp_(0.0, self.clip_sigma)
        low, inverse = self._bounds(z.amin(dim=(2, 3), keepdim=True), z.amax(dim=(2, 3), keepdim=True),
                                    mean, std, torch)
        return z.sub_(low).mul_(inverse).clamp_(0.0, 1.0)

    def inverse_transform(self, y: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Map model-space images ``y`` (N, C, H, W), e.g. reconstructions, back to the file's
        pixel units. ``raw`` are the stored images of the same jets: "sample-minmax" scales each jet
        and channel by its own extremes, which only the raw jet knows. Exact up to what the forward
        transform threw away: pixels below ``zero_threshold`` (0 either way) and values beyond
        the ``clip_sigma`` clip."""
        y = np.asarray(y, dtype=np.float32)
        if y.shape != np.shape(raw) or y.ndim != 4 or y.shape[1] != self.channels:
            raise ValueError(f"expected two batches (N, {self.channels}, H, W) of one shape, "
                             f"got {y.shape} and {np.shape(raw)}")
        std = self._safe_std().reshape(1, -1, 1, 1)
        if self.pixel_scaling == "channel":
            z = y * std
        else:
            z = np.where(np.asarray(raw) < np.float32(self.zero_threshold), np.float32(0.0),
                         np.asarray(raw, dtype=np.float32))
            if self.pixel_transform == "log1p":
                z = np.log1p(z)
            mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
            low, inverse = self._bounds(z.min(axis=(2, 3), keepdims=True), z.max(axis=(2, 3), keepdims=True),
                                        mean, std, np)
            span = np.where(inverse > 0, 1.0 / np.where(inverse > 0, inverse, 1.0), 0.0)
            z = y * span.astype(np.float32) + low.astype(np.float32)
        return np.expm1(z) if self.pixel_transform == "log1p" else z

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (logged with every model)."""
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessor:
        fmt = data.get("format", FORMAT)
        if fmt != FORMAT:
            raise ValueError(f"unknown preprocessor format {fmt!r}, expected {FORMAT!r}")
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names - {"format"}
        if unknown:
            raise ValueError(f"unknown preprocessor fields: {sorted(unknown)}")
        return cls(**{k: v for k, v in data.items() if k in names})


def check_pixel_options(pixel_transform: str, pixel_scaling: str) -> None:
    """One-line ValueError for an unknown ``pixel_transform`` / ``pixel_scaling``."""
    if pixel_transform not in PIXEL_TRANSFORMS:
        raise ValueError(f"pixel_transform must be one of {', '.join(PIXEL_TRANSFORMS)}, got {pixel_transform!r}")
    if pixel_scaling not in PIXEL_SCALINGS:
        raise ValueError(f"pixel_scaling must be one of {', '.join(PIXEL_SCALINGS)}, got {pixel_scaling!r}")
