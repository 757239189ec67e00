"""A fine-tuned classifier packaged for physicists: raw images in, signal probabilities out.

The logged ``classifier`` model of a downstream run is a :class:`JetTagger`, so that
``mlflow.pyfunc.load_model("models:/tagger-vit-32x32x3@champion").predict(X_jets)`` works on
images exactly as stored in an E2E HDF5 file, with no knowledge of the training-time
preprocessing (its fitted statistics travel inside the model).
"""

from __future__ import annotations

import torch
from torch import nn

from mae_tracker.data.preprocess import Preprocessor
from mae_tracker.models.classifier import JetClassifier

INPUT_LAYOUT = "NHWC"  # channels last, like the CMS E2E `X_jets` (N, H, W, C) float32


class JetTagger(nn.Module):
    """forward(raw images (N, H, W, C) float32) -> P(label 1) (N,) in [0, 1]: the probability of
    the file's first class (quark for quark/gluon, top for top/QCD, electron for e/gamma).

    ``classifier`` is the trained JetClassifier (still trainable: ``tagger.classifier``);
    ``preprocessor`` the statistics it was trained with. The layout is fixed to channels
    last for every tagger, so all versions of a registered family take the same input.
    """

    input_layout = INPUT_LAYOUT

    def __init__(self, classifier: JetClassifier, preprocessor: Preprocessor) -> None:
        super().__init__()
        self.classifier = classifier
        self.preprocessor = preprocessor

    @property
    def encoder(self) -> nn.Module:
        return self.classifier.encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] != self.preprocessor.channels:
            raise ValueError(f"expected raw images (N, H, W, {self.preprocessor.channels}) channels last, "
                             f"got shape {tuple(images.shape)}")
        x = self.preprocessor.transform(images.permute(0, 3, 1, 2))  # (N, C, H, W), float32, new memory
        return torch.sigmoid(self.classifier(x))


# Models logged before the rename unpickle by this name.
QuarkTagger = JetTagger
