"""`python -m mae_tracker.sweep CONFIG.yaml` (also mounted as `mae-tracker sweep`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mae_tracker.cli_errors import clean_errors


@click.command(name="sweep")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--storage", default=None, metavar="URL",
              help="Optuna storage (any SQLAlchemy URL). Default: $MAE_TRACKER_OPTUNA_STORAGE, else the "
                   "tracking store's own: optuna.db beside a SQLite store, or for a server a file in the "
                   "cache keyed by its URI.")
@click.option("--study-name", default=None, help="Study name; default: the YAML's `name` (or its file name).")
@click.option("--n-trials", type=int, default=None,
              help="Finished (complete + pruned) trials to reach; default: the YAML's n_trials.")
@click.option("--n-workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on the same study, each with cores // N torch threads.")
@click.option("--worker", is_flag=True,
              help="Only run trials of a sweep already started (another machine joining the study).")
@click.option("--data", default=None, help="Jet images for every trial (overrides the YAML): an HDF5 or Parquet "
              "file, a folder, a glob or a comma list; a study keeps the dataset (by digest) and split of its first "
              "trial.")
@click.option("--progress/--no-progress", default=None,
              help="Per-epoch progress bars of the arms; default: on in a terminal with one worker. "
                   "One line per finished trial is always printed.")
@click.option("--threads", "num_threads", type=int, default=0, hidden=True)
@clean_errors
def main(config: Path, **options: object) -> None:
    """Run or continue the Optuna sweep described by CONFIG (a sweeps/*.yaml file).

    Rerunning the same command continues the study to its number of trials.
    """
    from mae_tracker.sweep.spec import load_spec

    if options["progress"] is None:  # bars of several workers would overwrite each other
        options["progress"] = sys.stderr.isatty() and options["n_workers"] == 1
    load_spec(config)  # a typo is reported before MLflow, Optuna and torch are even imported
    from mae_tracker.sweep.runner import run_sweep

    run_sweep(config, **options)


if __name__ == "__main__":
    main()
