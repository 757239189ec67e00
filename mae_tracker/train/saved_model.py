"""Models as weights plus the config that rebuilds them: logging, and the one safe loader.

A logged model is an MLflow pyfunc model written as "models from code" (``pyfunc_model.py``
beside this file; no Python object is cloudpickled) with two artifacts:

- ``config.json``: what :func:`mae_tracker.models.packaged.rebuild` needs (model kind, encoder /
  MAE / head config, the fitted preprocessing) plus the format name and the writer's version;
- ``weights.safetensors``: the ``state_dict``, tensors only.

Users load it the usual MLflow way (``mlflow.pyfunc.load_model``, ``mlflow models serve``); the
project itself never does. :func:`load_model` reads the MLmodel file (YAML), checks that the
model was written in this format, downloads the two artifacts, parses the JSON and the
safetensors file and rebuilds the module from the installed project code. It never unpickles
anything and never imports code stored with a model (the models-from-code file is code too).
Anything else, e.g. an old ``mlflow.pytorch`` pickle, is refused with one line naming the URI;
``mae-tracker migrate-model`` converts a pickle its user trusts (see ``mae_tracker/registry/migration.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterator

import mlflow
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mae_tracker import __version__
from mae_tracker.models.packaged import KINDS, RawImageModel, describe, rebuild
from mae_tracker.train.tracking import configure_tracking

FORMAT = "mae-tracker-safetensors/1"
FORMAT_KEY = "mae_tracker_format"  # in the MLmodel metadata and in config.json
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
ARTIFACTS = {"config": f"artifacts/{CONFIG_FILE}", "weights": f"artifacts/{WEIGHTS_FILE}"}
CODE_FILE = Path(__file__).with_name("pyfunc_model.py")
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KiB; refuse to parse anything absurd


class UnsafeModelError(ValueError):
    """A model the project did not write in its safe format (or a corrupt one)."""


def requirements() -> list[str]:
    """Exact versions of what rebuilds the model: the project that wrote it, torch, timm, safetensors."""
    pins = [f"mae-tracker=={__version__}"]
    for package in ("torch", "timm", "safetensors", "numpy"):
        pins.append(f"{package}=={importlib_metadata.version(package)}")
    return pins


def write_files(model: RawImageModel, folder: Path) -> dict[str, str]:
    """``config.json`` and ``weights.safetensors`` of ``model`` in ``folder``; returns their paths."""
    config = {FORMAT_KEY: FORMAT, "mae_tracker_version": __version__, **describe(model)}
    paths = {"config": str(folder / CONFIG_FILE), "weights": str(folder / WEIGHTS_FILE)}
    Path(paths["config"]).write_text(json.dumps(config, indent=2, sort_keys=True))
    # clone(): safetensors refuses tensors that share memory (e.g. tied or viewed weights)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()},
              paths["weights"], metadata={FORMAT_KEY: FORMAT})
    return paths


def read_files(config_path: str | Path, weights_path: str | Path, source: str = "") -> RawImageModel:
    """Rebuild a module from its two files: JSON and safetensors only, strict key match."""
    source = source or str(Path(config_path).parent)
    try:
        if Path(config_path).stat().st_size > MAX_CONFIG_BYTES:
            raise UnsafeModelError(f"model {source}: {CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes")
        config = json.loads(Path(config_path).read_text())
        if not isinstance(config, dict) or config.get(FORMAT_KEY) != FORMAT:
            raise UnsafeModelError(f"model {source}: {CONFIG_FILE} is not in the {FORMAT} format")
        state = load_file(str(weights_path))
        model = rebuild(config)
        model.load_state_dict(state, strict=True)
    except UnsafeModelError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
        raise UnsafeModelError(f"model {source}: cannot rebuild it from its weights and config: "
                               f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    return model.eval()


def log_model(model: RawImageModel, name: str, input_example: np.ndarray, metadata: dict[str, Any]) -> str:
    """Log ``model`` in the active run as a safe pyfunc model; returns ``runs:/<run_id>/<name>``.

    ``input_example`` is a small batch of raw images (N, H, W, C) float32; the signature is
    inferred from it and the model's real output. ``metadata`` lands in the MLmodel file (read
    by the registry without loading anything) next to the format name.
    """
    from mlflow.models import infer_signature

    model.eval().cpu()
    with torch.no_grad():
        output = model(torch.from_numpy(input_example)).numpy()
    signature = infer_signature(input_example, output)
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = write_files(model, Path(tmp))
        logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
        mlflow.pyfunc.log_model(
            name=name, python_model=str(CODE_FILE), artifacts=artifacts, signature=signature,
            input_example=input_example, pip_requirements=requirements(),
            metadata={**metadata, FORMAT_KEY: FORMAT, "model_kind": describe(model)["kind"],
                      "mae_tracker_version": __version__})
        readable = Path(tmp) / f"{name}_metadata.json"  # also a readable copy next to the run's files
        readable.write_text(json.dumps(metadata, indent=2, default=str))
        mlflow.log_artifact(str(readable))
    return f"runs:/{mlflow.active_run().info.run_id}/{name}"


@contextlib.contextmanager
def pickle_deserialization(allowed: bool) -> Iterator[None]:
    """MLflow's own switch for unpickling models, set for the duration of a block: off for every
    project load, on only for ``migrate-model`` on the user's word."""
    key = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    saved = os.environ.get(key)
    os.environ[key] = "true" if allowed else "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def model_metadata(uri: str, kind: str | None = None) -> dict[str, Any]:
    """The MLmodel metadata of a model written in the safe format (YAML only: nothing loads).

    Raises :class:`UnsafeModelError` (one line naming ``uri``) for anything else, or for a model of
    another kind than ``kind`` ("encoder", "mae", "tagger").
    """
    configure_tracking()
    try:
        with pickle_deserialization(allowed=False):
            info = mlflow.models.get_model_info(uri)
    except Exception as err:  # MLflow raises several types for a bad URI
        raise ValueError(f"cannot load model {uri!r}: {str(err).splitlines()[0]}") from err
    metadata = dict(info.metadata or {})
    pyfunc = (info.flavors or {}).get("python_function", {})
    written = (metadata.get(FORMAT_KEY) == FORMAT and set(info.flavors) == {"python_function"}
               and pyfunc.get("loader_module") == "mlflow.pyfunc.loaders.code_model"
               and {k: (v or {}).get("path") for k, v in (pyfunc.get("artifacts") or {}).items()} == ARTIFACTS)
    if not written:
        flavors = ", ".join(sorted(info.flavors or {})) or "none"
        raise UnsafeModelError(
            f"refusing model {uri!r}: not written by mae-tracker in its safe format {FORMAT} (flavors: {flavors}); "
            "loading it could run code stored with it. If you trust it, convert it once with "
            f"`mae-tracker migrate-model {uri} --i-trust-this-pickle`")
    if kind is not None and metadata.get("model_kind") != kind:
        raise UnsafeModelError(f"model {uri!r} is a {metadata.get('model_kind')!r} model, expected {kind!r}")
    return metadata


def load_model(uri: str, kind: str | None = None) -> tuple[RawImageModel, dict[str, Any]]:
    """Rebuild the model at ``uri`` (any MLflow model URI) on the CPU, with its metadata.

    The only way the project loads a model: see the module docstring for what it trusts.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    metadata = model_metadata(uri, kind)
    info = mlflow.models.get_model_info(uri)
    with tempfile.TemporaryDirectory() as tmp, pickle_deserialization(allowed=False):
        try:
            paths = {key: mlflow.artifacts.download_artifacts(artifact_uri=f"{info.artifact_path}/{path}",
                                                              dst_path=str(Path(tmp) / key))
                     for key, path in ARTIFACTS.items()}
        except Exception as err:
            raise ValueError(f"cannot load model {uri!r}: {str(err).splitlines()[0]}") from err
        model = read_files(paths["config"], paths["weights"], source=uri)
    for key in ("encoder_config", "preprocessing"):  # the registry files models by the metadata
        if key in metadata and _plain(metadata[key]) != _plain(describe(model)[key]):
            raise UnsafeModelError(f"model {uri!r}: its MLmodel {key} differs from the one in {CONFIG_FILE}")
    return model, metadata


def _plain(value: Any) -> Any:
    """As JSON would give it back (tuples -> lists), so YAML and JSON copies compare."""
    return json.loads(json.dumps(value, sort_keys=True))
