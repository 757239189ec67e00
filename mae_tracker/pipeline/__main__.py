"""`python -m mae_tracker.pipeline PIPELINE.yaml` (also mounted as `mae-tracker pipeline`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mae_tracker.cli_errors import clean_errors


@click.command(name="pipeline")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write the full report (Markdown + HTML + figures) here.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Generator processes if the data is not cached yet [default: all cores].")
@click.option("--progress/--no-progress", default=None,
              help="Per-epoch progress bars; default: on in a terminal. Step lines are always printed.")
@clean_errors
def main(config: Path, out_dir: Path | None, workers: int | None, progress: bool | None) -> None:
    """Run or continue the pipeline described by CONFIG (e.g. sweeps/pipeline-qg.yaml): data, sweep,
    long pretraining, probe / finetune / scratch and baselines per labelled fraction and seed,
    and the results table. Rerunning the same command continues where it stopped."""
    from mae_tracker.pipeline.spec import load_pipeline_spec

    load_pipeline_spec(config)  # a typo is reported before anything runs
    from mae_tracker.pipeline.runner import run_pipeline

    run_pipeline(config, out_dir=out_dir, workers=workers,
              progress=sys.stderr.isatty() if progress is None else progress)


if __name__ == "__main__":
    main()
