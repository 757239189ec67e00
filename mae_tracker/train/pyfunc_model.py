"""The code of every logged mae-tracker model ("models from code": MLflow copies this file into
the model and runs it when a user calls ``mlflow.pyfunc.load_model`` or ``mlflow models serve``).

It holds no weights and pickles nothing: ``load_context`` rebuilds the model from the model's
``config.json`` and ``weights.safetensors`` with the installed mae-tracker (the version the
model's requirements pin). Input: raw images (N, H, W, C) as stored in the jet files.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

BATCH = 256  # images per forward pass: bounded memory for any request size


class JetModel(PythonModel):
    # No type hints on predict: MLflow would read them as a schema; the logged signature is the
    # schema. MLflow's own switch for such a class (its ChatModel uses it) skips the type-hint
    # wrapper, and with it the coloured "Add type hints" warning it printed into every training log
    # (twice per logged model; a warnings filter cannot reach it, MLflow re-enables the warning).
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from mae_tracker.train.saved_model import read_files

        self.model = read_files(context.artifacts["config"], context.artifacts["weights"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        images = np.asarray(model_input)
        if images.dtype not in (np.float32, np.float64):
            raise ValueError(f"expected float32 or float64 images, got {images.dtype}")
        outputs = []
        with torch.no_grad():
            for start in range(0, len(images), BATCH):
                batch = torch.from_numpy(np.ascontiguousarray(images[start:start + BATCH], dtype=np.float32))
                outputs.append(self.model(batch).numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0,), dtype=np.float32)


mlflow.models.set_model(JetModel())
