"""The three models a run logs, each taking images exactly as stored in a jet file.

One input contract for all of them: raw images ``(N, H, W, C)`` channels last, like the CMS
E2E ``X_jets``, float32 or float64; the fitted preprocessing travels inside the model.

- :class:`JetEncoder`: the pretrained encoder as a feature extractor -> features ``(N, D)``;
- :class:`MAEReconstruction`: the whole MAE -> its reconstruction ``(N, H, W, C)`` in
  preprocessed units (visible patches kept, masked ones predicted);
- :class:`JetTagger`: a trained classifier -> P(label 1) ``(N,)``, the probability of the
  file's first class (quark for quark/gluon, top for top/QCD, electron for e/gamma).

:func:`describe` gives the JSON-able config that :func:`rebuild` turns back into an untrained
module of the same shape: what gets saved is that config plus the ``state_dict``, never the
Python object, so loading runs no code from the model (see ``train/saved_model.py``). This
module reads no files.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mae_tracker.data.preprocess import Preprocessor
from mae_tracker.models.classifier import JetClassifier
from mae_tracker.models.mae import MaskedAutoencoder, build_mae
from mae_tracker.models.encoders import build_encoder
from mae_tracker.models.variants import EncoderConfig, MAEConfig

INPUT_LAYOUT = "NHWC"  # channels last, like the CMS E2E `X_jets` (N, H, W, C)
KINDS = ("encoder", "mae", "tagger")


class RawImageModel(nn.Module):
    """Shared input side: checks raw channels-last images and preprocesses them (N, C, H, W)."""

    input_layout = INPUT_LAYOUT

    def __init__(self, preprocessor: Preprocessor, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.preprocessor = preprocessor
        self.image_size = (int(image_size[0]), int(image_size[1]))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        expected = (*self.image_size, self.preprocessor.channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected raw images (N, {', '.join(map(str, expected))}) channels last, "
                             f"got shape {tuple(images.shape)}")
        if images.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"expected float32 or float64 images, got {images.dtype}")
        return self.preprocessor.transform(images.permute(0, 3, 1, 2))  # float32, new memory


class JetEncoder(RawImageModel):
    """forward(raw images (N, H, W, C)) -> pooled features (N, D); ``.encoder`` is the real one."""

    def __init__(self, encoder: nn.Module, preprocessor: Preprocessor, pool: str = "mean") -> None:
        super().__init__(preprocessor, encoder.config.img_size)
        self.encoder = encoder
        self.pool = pool

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(self.prepare(images), pool=self.pool)


class MAEReconstruction(RawImageModel):
    """forward(raw images (N, H, W, C)) -> reconstruction (N, H, W, C), preprocessed units."""

    def __init__(self, mae: MaskedAutoencoder, preprocessor: Preprocessor, mask_ratio: float) -> None:
        super().__init__(preprocessor, mae.config.encoder.img_size)
        self.mae = mae
        self.mask_ratio = float(mask_ratio)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.mae.reconstruct(self.prepare(images), self.mask_ratio)[0].permute(0, 2, 3, 1)


class JetTagger(RawImageModel):
    """forward(raw images (N, H, W, C)) -> P(label 1) (N,) in [0, 1].

    ``classifier`` is the trained JetClassifier (still trainable: ``tagger.classifier``).
    """

    def __init__(self, classifier: JetClassifier, preprocessor: Preprocessor) -> None:
        super().__init__(preprocessor, classifier.encoder.config.img_size)
        self.classifier = classifier

    @property
    def encoder(self) -> nn.Module:
        return self.classifier.encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(self.prepare(images)))


def describe(model: RawImageModel) -> dict[str, Any]:
    """The JSON-able config :func:`rebuild` needs for a module whose ``state_dict`` loads."""
    config: dict[str, Any] = {"input_layout": INPUT_LAYOUT, "preprocessing": model.preprocessor.to_dict()}
    if isinstance(model, JetEncoder):
        return {"kind": "encoder", **config, "encoder_config": model.encoder.config.to_dict(), "pool": model.pool}
    if isinstance(model, MAEReconstruction):
        return {"kind": "mae", **config, "mae_config": model.mae.config.to_dict(),
                "encoder_config": model.mae.config.encoder.to_dict(), "mask_ratio": model.mask_ratio}
    if isinstance(model, JetTagger):
        head = model.classifier
        dropout = next(m.p for m in head.head if isinstance(m, nn.Dropout))
        return {"kind": "tagger", **config, "encoder_config": head.encoder.config.to_dict(),
                "classifier": {"linear_probe": head.linear_probe, "pool": head.pool, "dropout": dropout}}
    raise TypeError(f"cannot describe a {type(model).__name__}: expected one of JetEncoder, MAEReconstruction, "
                    "JetTagger")


def rebuild(config: dict[str, Any]) -> RawImageModel:
    """An untrained module of the shape ``config`` (from :func:`describe`) says; load its weights next."""
    kind = config.get("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    if config.get("input_layout") != INPUT_LAYOUT:
        raise ValueError(f"unknown input layout {config.get('input_layout')!r}; expected {INPUT_LAYOUT!r}")
    preprocessor = Preprocessor.from_dict(config["preprocessing"])
    if kind == "mae":
        return MAEReconstruction(build_mae(MAEConfig.from_dict(config["mae_config"])), preprocessor,
                                 config["mask_ratio"])
    encoder = build_encoder(EncoderConfig.from_dict(config["encoder_config"]))
    if kind == "encoder":
        return JetEncoder(encoder, preprocessor, pool=config.get("pool", "mean"))
    head = config["classifier"]
    classifier = JetClassifier(encoder, linear_probe=bool(head["linear_probe"]), dropout=float(head["dropout"]),
                               pool=str(head["pool"]))
    return JetTagger(classifier, preprocessor)
