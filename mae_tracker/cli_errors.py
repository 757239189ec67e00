"""How every command line (`mae-tracker ...`, `python -m mae_tracker.sweep|pipeline`) reports a
problem the user can fix: one line on stderr and a non-zero exit, no traceback."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable

import click


def clean_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Bad data exits 2; bad settings, an unloadable encoder or a diverging loss exit 1.
    Set MAE_TRACKER_DEBUG=1 to see the traceback instead."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as err:
            if not user_error(err) or os.environ.get("MAE_TRACKER_DEBUG"):
                raise
            from mae_tracker.data.errors import DataError

            click.echo(f"Error: {err}", err=True)
            sys.exit(2 if isinstance(err, DataError) else 1)

    return wrapper


def user_error(err: BaseException) -> bool:
    """Bad input or settings (ValueError, a missing file, bad data), a diverging loss or a missing
    simulation extra, as opposed to a bug. Looked up without importing torch: a YAML typo is
    reported before it loads."""
    from mae_tracker.data.errors import DataError

    loop = sys.modules.get("mae_tracker.train.loop")
    training_failed = (loop.TrainingFailed,) if loop is not None else ()
    sim = sys.modules.get("mae_tracker.sim")  # the simulation extra missing: install it
    sim_missing = (sim.SimulationMissing,) if sim is not None else ()
    return isinstance(err, (DataError, ValueError, FileNotFoundError, *training_failed, *sim_missing))
