"""The three classification tasks, and what a file says about its task (no torch, no Pythia).

Each task has defaults that make sense for it (class names for plots and reports, image size
and patch per preset) and the generators write them into the file attributes
(:func:`task_attrs`), so that readers, arms and the report take them from the data instead of
assuming quark/gluon:

* ``task``         -- "quark-gluon", "top-qcd" or "electron-photon";
* ``class_names``  -- [name of label 1, name of label 0], e.g. ["top", "QCD"];
* ``label_convention`` -- "1=top,0=QCD" (the older attribute, kept for compatibility);
* ``patch_size``   -- the ViT patch that suits the image (<= 64 tokens at the CPU preset).

:func:`class_names` and :func:`task_name` read them back from a file's description
(:class:`~mae_tracker.data.validate.JetImagesInfo`) or an attrs dict; files written before these
attributes existed count as quark/gluon (``X_jets``) or electron/photon (``X``, the CMS pair).
The generators themselves live in :mod:`mae_tracker.sim`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

CREATOR = "mae-tracker"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    class_names: tuple[str, str]  # (label 1, label 0)
    images_key: str
    schema: str
    default_channels: int
    patch_size: Mapping[str, int]  # preset -> patch
    summary: str

    @property
    def label_convention(self) -> str:
        return f"1={self.class_names[0]},0={self.class_names[1]}"


TASKS: dict[str, TaskSpec] = {
    "quark-gluon": TaskSpec("quark-gluon", ("quark", "gluon"), "X_jets", "e2e-quark-gluon", 3,
                            {"cpu": 4, "e2e": 5}, "light-quark vs gluon jets, anti-kt R=0.4, pT 70-200 GeV"),
    "top-qcd": TaskSpec("top-qcd", ("top", "QCD"), "X_jets", "e2e-top-qcd", 8,
                        {"cpu": 4, "e2e": 5}, "hadronic top vs QCD fat jets, anti-kt R=0.8, pT 400-600 GeV"),
    "electron-photon": TaskSpec("electron-photon", ("electron", "photon"), "X", "e2e-electron-photon", 2,
                                {"cpu": 4, "e2e": 4}, "single electrons vs photons, 32x32 ECAL crystals"),
}
DEFAULT_TASK = "quark-gluon"
# Files without a ``task`` attribute: the task their image key implies.
TASK_OF_IMAGES_KEY = {"X_jets": "quark-gluon", "X": "electron-photon"}


class DescribesImages(Protocol):
    """What a file's description offers here (JetFileInfo, a dataset's info)."""

    attrs: dict[str, Any]
    images_key: str


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}") from None


def task_attrs(task: TaskSpec, preset: str) -> dict[str, Any]:
    """The per-task file attributes every generator writes: schema, creator, task, class names,
    label convention and patch size, all from the table."""
    return {"schema": task.schema, "creator": CREATOR, "task": task.name, "class_names": list(task.class_names),
            "label_convention": task.label_convention, "patch_size": int(task.patch_size.get(preset, 4))}


def parse_label_convention(text: Any) -> tuple[str, str] | None:
    """(name of label 1, name of label 0) from a ``label_convention`` such as "1=quark,0=gluon";
    None when it does not name both labels."""
    parsed: dict[int, str] = {}
    for part in str(text or "").split(","):
        label, _, name = part.partition("=")
        if label.strip() in ("0", "1") and name.strip():
            parsed[int(label)] = name.strip()
    return (parsed[1], parsed[0]) if set(parsed) == {0, 1} else None


def _attrs_of(source: DescribesImages | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(source, Mapping):
        return dict(source), "X_jets"
    return dict(source.attrs), source.images_key


def task_name(source: DescribesImages | Mapping[str, Any]) -> str:
    """The task of a file (its description or attrs dict); old files: by their image key."""
    attrs, key = _attrs_of(source)
    if str(attrs.get("task", "")) in TASKS:
        return str(attrs["task"])
    return TASK_OF_IMAGES_KEY.get(key, DEFAULT_TASK)


def class_names(source: DescribesImages | Mapping[str, Any]) -> tuple[str, str]:
    """(name of label 1, name of label 0) of a file: attrs ``class_names``, else
    ``label_convention``, else its task's defaults (old ``X_jets`` files quark/gluon, old ``X``
    files electron/photon)."""
    attrs, key = _attrs_of(source)
    names = attrs.get("class_names")
    if isinstance(names, str):
        try:
            names = json.loads(names)
        except ValueError:
            names = [n.strip() for n in names.split(",")]
    if isinstance(names, (list, tuple)) and len(names) == 2 and all(str(n) for n in names):
        return str(names[0]), str(names[1])
    parsed = parse_label_convention(attrs.get("label_convention"))
    if parsed is not None:
        return parsed
    return TASKS[TASK_OF_IMAGES_KEY.get(key, DEFAULT_TASK)].class_names
