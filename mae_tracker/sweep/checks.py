"""Small validators for sweep YAML values; each raises one line through ``fail(key, message)``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import yaml

from mae_tracker.sweep.bounds import out_of_bounds


class SweepSpecError(ValueError):
    """A problem in a sweep YAML: one line, naming the file and the key."""


Fail = Callable[[str, str], SweepSpecError]


def read_yaml(path: Path, what: str, error: type[SweepSpecError]) -> tuple[Any, str]:
    """(parsed YAML, its text) of a sweep or study file; any problem is one ``error`` line."""
    try:
        text = path.read_text()
    except OSError as err:
        raise error(f"{path}: cannot read the {what} file ({err.strerror})") from None
    try:
        return yaml.safe_load(text), text
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise error(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None


def check_keys(values: dict[str, Any], allowed: tuple[str, ...], prefix: str, fail: Fail) -> None:
    for key in values:
        if key not in allowed:
            raise fail(f"{prefix}{key}", f"unknown key; allowed: {', '.join(allowed)}")


def mapping(raw: dict[str, Any], key: str, fail: Fail) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise fail(key, f"must be a mapping, got {type(value).__name__}")
    return value


def choice(value: Any, allowed: tuple[str, ...], key: str, fail: Fail) -> str:
    if value not in allowed:
        raise fail(key, f"{value!r} is not allowed; use one of {', '.join(allowed)}")
    return value


def number(value: Any, key: str, fail: Fail) -> float:
    # PyYAML reads `3e-4` (no dot) as a string; accept what is clearly a number.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(key, f"must be a finite number, got {value!r}")
    return value


def integer(value: Any, key: str, fail: Fail, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise fail(key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def check_type(value: Any, kind: str, key: str, fail: Fail, field: str = "") -> None:
    """``value`` must suit a config field of type ``kind`` and lie in the field's allowed range
    (bounds.py); a variant must exist (a typo would otherwise surface as a failed trial minutes
    later)."""
    if field == "variant":
        from mae_tracker.models.variants import VARIANTS

        if value not in VARIANTS:
            raise fail(key, f"unknown variant {value!r}; use one of {', '.join(VARIANTS)}")
    if field in ("pixel_transform", "pixel_scaling"):
        from mae_tracker.data.preprocess import PIXEL_SCALINGS, PIXEL_TRANSFORMS

        allowed = PIXEL_TRANSFORMS if field == "pixel_transform" else PIXEL_SCALINGS
        if value not in ("", *allowed):
            raise fail(key, f"unknown {field} {value!r}; use one of {', '.join(allowed)}")
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool),
          "str": isinstance(value, str)}.get(kind, True)
    if not ok:
        raise fail(key, f"{value!r} is not a valid {kind}")
    problem = out_of_bounds(field, value)
    if problem:
        raise fail(key, problem)


def check_config(cls: type, values: dict[str, Any], key: str, fail: Fail) -> None:
    """Build ``cls(**values)`` so that the config's own checks (value combinations) run now; its
    complaint becomes one line about ``key``."""
    try:
        cls(**values)
    except (ValueError, TypeError) as err:
        raise fail(key, str(err)) from None


def config_fields(values: dict[str, Any], cls: type, reserved: tuple[str, ...], section: str,
                  fail: Fail, owner: str = "the sweep") -> dict[str, Any]:
    """Check a `fixed` / `downstream` section against the config dataclass's fields and types."""
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields or key in reserved:
            allowed = ", ".join(n for n in fields if n not in reserved)
            why = f"is set by {owner}" if key in reserved else f"not a {cls.__name__} field"
            raise fail(f"{section}.{key}", f"{why}; allowed: {allowed}")
        if fields[key] == "float" and isinstance(value, str):
            value = values[key] = number(value, f"{section}.{key}", fail)
        check_type(value, fields[key], f"{section}.{key}", fail, field=key)
    return dict(values)
