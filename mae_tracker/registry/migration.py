"""One-time conversion of a model logged as an ``mlflow.pytorch`` pickle (mae-tracker before the
safe format) into the safe format (``mae-tracker migrate-model URI --i-trust-this-pickle``).

Unpickling runs whatever code the pickle names, so this is the one place the project unpickles,
and only on the user's explicit word that they trust whoever logged the model. The unpickled
object gives only its weights: they are copied into a module rebuilt from the installed project
code (encoder, MAE or tagger, by what the object holds), which is logged in the same run under
the same name (``runs:/<run>/<name>`` then resolves to it, the newest). For a registered URI
(``models:/<family>/<version>`` or ``@alias``) the safe model becomes a new version of the same
family with the old version's tags, and every alias of the old version moves to it.
"""

from __future__ import annotations

import contextlib
import sys
import types
from dataclasses import dataclass
from typing import Any, Iterator

import mlflow
import numpy as np
from torch import nn

from mae_tracker.data.preprocess import Preprocessor
from mae_tracker.models.packaged import JetEncoder, JetTagger, MAEReconstruction, RawImageModel, describe, rebuild
from mae_tracker.train import saved_model
from mae_tracker.train.tracking import configure_tracking

# The module paths old pickles name their wrapper classes by (the classes are gone).
LEGACY_CLASSES = {"mae_tracker.models.export": ("EncoderFeatures", "MAEReconstruction"),
                  "mae_tracker.models.tagger": ("JetTagger", "QuarkTagger")}
TRUST_FLAG = "--i-trust-this-pickle"


@dataclass
class Migration:
    """Where the safe copy went: its URI, and the registered version it became (if any)."""

    source: str
    model_uri: str
    registered_model: str | None = None
    version: str | None = None
    aliases: tuple[str, ...] = ()


def migrate_model(uri: str, *, trust_pickle: bool) -> Migration:
    """Convert the pickled model at ``uri`` (see module docstring). ValueError, one line, when
    ``trust_pickle`` is not given, when the model is already safe or when it is not ours."""
    if not trust_pickle:
        raise ValueError(f"refusing to migrate {uri} without {TRUST_FLAG}: migrating unpickles it, which runs any "
                         "code stored in it; pass the flag only if you trust whoever logged it")
    configure_tracking()
    try:
        saved_model.model_metadata(uri)
    except saved_model.UnsafeModelError:
        pass
    else:
        raise ValueError(f"{uri} is already in the safe format {saved_model.FORMAT}: nothing to migrate")
    info = mlflow.models.get_model_info(uri)
    metadata = dict(info.metadata or {})
    if "pytorch" not in (info.flavors or {}) or "encoder_config" not in metadata:
        raise ValueError(f"{uri} is not a pickled mae-tracker model (flavors: {', '.join(info.flavors or {})})")
    with saved_model.pickle_deserialization(allowed=True), _legacy_modules():
        import mlflow.pytorch as mlflow_pytorch  # the one unpickling load in the project

        pickled = mlflow_pytorch.load_model(uri, map_location="cpu")
    safe = _rebuilt(pickled, metadata)
    client = mlflow.MlflowClient()
    name = client.get_logged_model(info.model_id).name if info.model_id else "encoder"
    model_uri = _log_into_run(client, info.run_id, name, safe, metadata, uri)
    result = Migration(source=uri, model_uri=model_uri)
    registered = _registered_version(client, uri)
    if registered is not None:
        _register_in_place(client, *registered, model_uri, result)
    return result


@contextlib.contextmanager
def _legacy_modules() -> Iterator[None]:
    """Empty stand-ins under the old class paths: unpickling restores their attributes only."""
    added = []
    for module_name, class_names in LEGACY_CLASSES.items():
        if module_name in sys.modules:
            continue
        module = types.ModuleType(module_name)
        for class_name in class_names:
            setattr(module, class_name, type(class_name, (nn.Module,), {"__module__": module_name}))
        sys.modules[module_name] = module
        added.append(module_name)
    try:
        yield
    finally:
        for module_name in added:
            sys.modules.pop(module_name, None)


def _rebuilt(pickled: Any, metadata: dict[str, Any]) -> RawImageModel:
    """The project's own module with the pickled object's weights (nothing else carried over)."""
    if hasattr(pickled, "classifier") and hasattr(pickled, "preprocessor"):
        wrapper: RawImageModel = JetTagger(pickled.classifier, Preprocessor.from_dict(pickled.preprocessor.to_dict()))
    else:
        preprocessor = Preprocessor.from_dict(metadata["preprocessing"])
        if hasattr(pickled, "mae"):
            wrapper = MAEReconstruction(pickled.mae, preprocessor, float(getattr(pickled, "mask_ratio", 0.75)))
        elif hasattr(pickled, "encoder"):
            wrapper = JetEncoder(pickled.encoder, preprocessor)
        else:
            raise ValueError(f"cannot tell what kind of model a {type(pickled).__name__} is")
    safe = rebuild(describe(wrapper))
    safe.load_state_dict(wrapper.state_dict(), strict=True)
    return safe.eval()


def _log_into_run(client: mlflow.MlflowClient, run_id: str, name: str, model: RawImageModel,
                  metadata: dict[str, Any], source: str) -> str:
    """Log the safe model in the model's own run, leaving the run's status and end time as they were."""
    run = client.get_run(run_id)
    height, width = model.image_size
    example = np.zeros((2, height, width, model.preprocessor.channels), dtype=np.float32)
    with mlflow.start_run(run_id=run_id):
        model_uri = saved_model.log_model(model, name, example, {**metadata, "migrated_from": source})
    if run.info.status != "RUNNING":
        client.set_terminated(run_id, run.info.status, end_time=run.info.end_time)
    return model_uri


def _registered_version(client: mlflow.MlflowClient, uri: str) -> tuple[str, str] | None:
    """(family, version) for ``models:/<family>/<version>`` or ``models:/<family>@<alias>``; None otherwise."""
    if not uri.startswith("models:/"):
        return None
    rest = uri[len("models:/"):].rstrip("/")
    if "@" in rest:
        family, alias = rest.split("@", 1)
        return family, str(client.get_model_version_by_alias(family, alias).version)
    family, _, version = rest.partition("/")
    return (family, version) if version.isdigit() else None


def _register_in_place(client: mlflow.MlflowClient, family: str, old: str, model_uri: str, result: Migration) -> None:
    """The safe copy as a new version of ``family`` with the old version's tags and aliases."""
    old_version = client.get_model_version(family, old)
    model_id = mlflow.models.get_model_info(model_uri).model_id
    new = client.create_model_version(family, source=f"models:/{model_id}", run_id=old_version.run_id,
                                      model_id=model_id, tags={**old_version.tags, "migrated_from_version": old},
                                      description=old_version.description)
    aliases = tuple(alias for alias, version in client.get_registered_model(family).aliases.items()
                    if str(version) == old)
    for alias in aliases:
        client.set_registered_model_alias(family, alias, new.version)
    client.set_model_version_tag(family, old, "unsafe_pickle", f"migrated to version {new.version}")
    result.registered_model, result.version, result.aliases = family, str(new.version), aliases
