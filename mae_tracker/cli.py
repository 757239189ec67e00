"""`mae-tracker` command line: thin shells over library functions."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from mae_tracker.data.errors import DataError
from mae_tracker.train.config import ARM_DEFAULTS, DownstreamConfig, PretrainConfig


def _clean_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Problems a user can fix become one line on stderr and a non-zero exit, no traceback:
    bad data exits 2; bad settings, an unloadable encoder or a diverging loss exit 1.
    Set MAE_TRACKER_DEBUG=1 to see the traceback instead."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mae_tracker.train.loop import TrainingFailed

        try:
            return func(*args, **kwargs)
        except (DataError, TrainingFailed, ValueError, FileNotFoundError) as err:
            if os.environ.get("MAE_TRACKER_DEBUG"):
                raise
            click.echo(f"Error: {err}", err=True)
            sys.exit(2 if isinstance(err, DataError) else 1)

    return wrapper


@click.group()
@click.version_option(package_name="mae-tracker")
def main() -> None:
    """Masked-autoencoder experiments on jet images, tracked in MLflow."""


@main.command()
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="HDF5 file to write (written atomically).")
@click.option("--n-jets", type=int, default=10_000, show_default=True, help="Total jets (balanced classes).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--preset", default="cpu", show_default=True, help="Detector preset: 'cpu' (32x32) or 'e2e' (125x125).")
@click.option("--pt-min", type=float, default=70.0, show_default=True, help="Jet pT window lower edge [GeV].")
@click.option("--pt-max", type=float, default=200.0, show_default=True, help="Jet pT window upper edge [GeV].")
@click.option("--eta-max", type=float, default=1.5, show_default=True, help="Jet |eta| cut.")
@click.option("--mpi/--no-mpi", default=True, show_default=True, help="Multi-parton interactions (off: ~5x faster).")
@click.option("--hadronisation/--no-hadronisation", default=True, show_default=True)
@click.option("--pt-matched/--no-pt-matched", default=False, show_default=True,
              help="Resample so quark and gluon pT spectra match.")
@click.option("--pthat-min", type=float, default=None,
              help="Pythia PhaseSpace:pTHatMin [GeV]; default 0.7 * pt-min (higher sculpts low-pT jets).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel Pythia processes (the output does not depend on it).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_clean_errors
def generate(out: Path, workers: int, progress: bool, **settings: Any) -> None:
    """Generate Pythia 8 quark and gluon jet images in the CMS E2E HDF5 schema."""
    from mae_tracker.data.generate import GeneratorConfig, generate_file

    try:
        config = GeneratorConfig(**settings)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    path = generate_file(config, out, workers=workers, progress=progress)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save mean quark and gluon images side by side to this PNG.")
@_clean_errors
def inspect(path: Path, plot_path: Path | None) -> None:
    """Summarise a jet-image HDF5 file: size, balance, per-channel statistics."""
    from mae_tracker.data.inspect import format_summary, plot_mean_images, summarize

    summary = summarize(path, with_mean_images=plot_path is not None)  # one pass over the file
    click.echo(format_summary(summary))
    if plot_path is not None:
        plot_mean_images(path, plot_path, summary=summary)
        click.echo(f"saved {plot_path}")


def _config_options(config_cls: type, overrides: dict[str, Any] | None = None,
                    skip: tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """One click option per config field: the dataclass is the single source of truth for
    names, types, defaults and help, so CLI, MLproject and logged params always agree."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for spec in reversed(dataclasses.fields(config_cls)):
            if spec.name in skip:
                continue
            default = (overrides or {}).get(spec.name, spec.default)
            flag = "--" + spec.name.replace("_", "-")
            # Booleans take a value (--norm-pix-loss true) so MLproject can pass them through.
            kind = {"int": int, "float": float, "str": str, "bool": click.BOOL}[str(spec.type)]
            func = click.option(flag, spec.name, type=kind, default=default,
                                show_default=True, help=spec.metadata.get("help"))(func)
        return func

    return decorate


@main.command()
@_config_options(PretrainConfig)
@click.option("--progress/--no-progress", default=True, show_default=True)
@_clean_errors
def pretrain(progress: bool, **settings: Any) -> None:
    """Pretrain a masked autoencoder on the unlabelled split (the pretrain arm)."""
    from mae_tracker.train.pretrain import pretrain as run_pretrain

    result = run_pretrain(PretrainConfig(**settings), progress=progress)
    click.echo(f"run {result['run_id']}: test_loss {result['test_loss']:.5f}; encoder {result['encoder_uri']}")


def _downstream_command(arm: str) -> None:
    doc = {"finetune": "Fine-tune a pretrained encoder + head, all weights trained (lower learning rate).",
           "probe": "Linear probe: frozen pretrained encoder, linear head only.",
           "scratch": "Baseline: the same architecture and head trained from random weights."}[arm]

    @_config_options(DownstreamConfig, overrides=ARM_DEFAULTS[arm], skip=("arm",))
    @click.option("--progress/--no-progress", default=True, show_default=True)
    @_clean_errors
    def command(progress: bool, **settings: Any) -> None:
        from mae_tracker.train.downstream import train_classifier

        result = train_classifier(DownstreamConfig(arm=arm, **settings), progress=progress)
        click.echo(f"run {result['run_id']}: test_auc {result['test_auc']:.4f} test_acc {result['test_acc']:.4f}")

    command.__doc__ = doc
    main.command(name=arm)(command)


for _arm in ("finetune", "probe", "scratch"):
    _downstream_command(_arm)


if __name__ == "__main__":
    main()
