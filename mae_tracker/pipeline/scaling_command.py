"""`mae-tracker scaling SCALING.yaml` (also `python -m mae_tracker.pipeline.scaling_command`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mae_tracker.cli_errors import clean_errors


@click.command(name="scaling")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write the tables (CSV, Markdown) and the figure here.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Generator processes if the data is not cached yet [default: all cores].")
@click.option("--progress/--no-progress", default=None,
              help="Per-epoch progress bars; default: on in a terminal. Step lines are always printed.")
@clean_errors
def main(config: Path, out_dir: Path | None, workers: int | None, progress: bool | None) -> None:
    """Run or continue the scaling study described by CONFIG (e.g. sweeps/scaling-qg.yaml): MAE
    pretraining at several sizes for each encoder, probe / finetune at small labelled fractions,
    the classical baselines on the same labels, a power-law fit of test AUC against pretraining
    jets and where it would cross the best baseline (an extrapolation). Rerun to continue."""
    from mae_tracker.pipeline.scaling_spec import load_scaling_spec

    load_scaling_spec(config)  # a typo is reported before anything runs
    from mae_tracker.pipeline.scaling import run_scaling

    run_scaling(config, out_dir=out_dir, workers=workers,
                progress=sys.stderr.isatty() if progress is None else progress)


if __name__ == "__main__":
    main()
