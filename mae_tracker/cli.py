"""`mae-tracker` command line: thin shells over library functions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import click

from mae_tracker.baselines.config import BaselineConfig
from mae_tracker.cli_errors import clean_errors
from mae_tracker.next_steps import after_classifier, after_pretrain
from mae_tracker.train.config import ARM_DEFAULTS, DOWNSTREAM_ARMS, DownstreamConfig, PretrainConfig
from mae_tracker.ui_links import model_route, run_where, where_to_look


@click.group()
@click.version_option(package_name="mae-tracker")
def main() -> None:
    """Masked-autoencoder experiments on jet images, tracked in MLflow."""


@main.command()
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="HDF5 file to write (written atomically); with --format parquet, --files > 1 or "
                   "--split-by-class, a new folder for the files.")
@click.option("--task", type=click.Choice(["quark-gluon", "top-qcd", "electron-photon"]), default="quark-gluon",
              show_default=True, help="What to generate: quark vs gluon jets, boosted top vs QCD fat jets, "
                                      "or single electrons vs photons.")
@click.option("--n-jets", type=int, default=10_000, show_default=True,
              help="Total images, balanced classes: jets, or particles for electron-photon (its n_particles).")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--preset", default=None, help="Detector preset: 'cpu' (32x32, 64 patches of 4) or 'e2e' "
                                             "(125x125 crystals); default cpu. Not for electron-photon.")
@click.option("--channels", type=int, default=None,
              help="Image channels: quark-gluon 3; top-qcd 3, 5 (+ d0, dz) or 8 (+ BPix1-3, default); "
                   "electron-photon 2 (energy, time).")
@click.option("--pt-min", type=float, default=None,
              help="pT window lower edge [GeV]; default 70 (q/g), 400 (top), 40 (e/gamma).")
@click.option("--pt-max", type=float, default=None,
              help="pT window upper edge [GeV]; default 200 (q/g), 600 (top), 60 (e/gamma).")
@click.option("--eta-max", type=float, default=None, help="|eta| cut; default 1.5 (jets), 1.44 (e/gamma).")
@click.option("--mpi/--no-mpi", default=None, help="Multi-parton interactions (jets; default on; off: ~5x faster).")
@click.option("--hadronisation/--no-hadronisation", default=None, help="quark-gluon only (default on).")
@click.option("--pt-matched/--no-pt-matched", default=None,
              help="quark-gluon only: resample so quark and gluon pT spectra match (default off).")
@click.option("--pthat-min", type=float, default=None,
              help="Pythia PhaseSpace:pTHatMin [GeV]; default 0.7 * pt-min (q/g), 0.85 * pt-min (top).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parallel generator processes (the output does not depend on it).")
@click.option("--format", "fmt", type=click.Choice(["hdf5", "parquet"]), default="hdf5", show_default=True,
              help="hdf5: the E2E HDF5 schema; parquet: the CMS Parquet layout (nested lists of doubles, "
                   "channels first; X_jets, or X_jet for top-qcd).")
@click.option("--files", type=click.IntRange(min=1), default=1, show_default=True,
              help="Split the jets into this many files (per class with --split-by-class).")
@click.option("--split-by-class", is_flag=True,
              help="One file per class, named by the class (as the CMS electron/photon pair).")
@click.option("--row-group-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Parquet: jets per row group (1 as in the CMS files).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@clean_errors
def generate(out: Path, workers: int, progress: bool, task: str, fmt: str, files: int, split_by_class: bool,
             row_group_size: int, **settings: Any) -> None:
    """Generate labelled images (quark/gluon, top/QCD or electron/photon) in the CMS E2E layouts."""
    from mae_tracker.sim.generate import generate_layout, generate_task_file, make_config

    try:
        config = make_config(task, **settings)
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    if fmt == "hdf5" and files == 1 and not split_by_class:
        if out.is_dir():
            raise click.UsageError(f"--out {out} is a folder; give the HDF5 file to write")
        path = generate_task_file(config, out, workers=workers, progress=progress)
        click.echo(f"wrote {path}")
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise click.UsageError(f"--out {out} already exists; give a new (or empty) folder for the files")
    for path in generate_layout(config, out, fmt=fmt, files=files, split_by_class=split_by_class,
                                row_group_size=row_group_size, workers=workers, progress=progress):
        click.echo(f"wrote {path}")


@main.command()
@click.argument("path")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also save mean quark and gluon images side by side to this PNG.")
@clean_errors
def inspect(path: str, plot_path: Path | None) -> None:
    """Summarise jet images (a file, folder, glob or comma list; HDF5 or Parquet): size, balance,
    per-channel statistics."""
    from mae_tracker.data.describe import format_summary, plot_mean_images, summarize

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
@clean_errors
def pretrain(progress: bool, **settings: Any) -> None:
    """Pretrain a masked autoencoder on the unlabelled split (the pretrain arm)."""
    from mae_tracker.train.pretrain import pretrain as run_pretrain

    result = run_pretrain(PretrainConfig(**settings), progress=progress)
    click.echo(f"run {result['run_id']}: test_loss {result['test_loss']:.5f}; encoder {result['encoder_uri']}")
    _say_next(after_pretrain(result["run_id"], result["encoder_uri"]))


def _say_next(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


def _downstream_command(arm: str) -> None:
    doc = {"finetune": "Fine-tune a pretrained encoder + head, all weights trained (lower learning rate).",
           "probe": "Linear probe: frozen pretrained encoder, linear head only.",
           "scratch": "Baseline: the same architecture and head trained from random weights."}[arm]

    @_config_options(DownstreamConfig, overrides=ARM_DEFAULTS[arm], skip=("arm",))
    @click.option("--progress/--no-progress", default=True, show_default=True)
    @clean_errors
    def command(progress: bool, **settings: Any) -> None:
        from mae_tracker.train.downstream import train_classifier

        result = train_classifier(DownstreamConfig(arm=arm, **settings), progress=progress)
        click.echo(f"run {result['run_id']}: test_auc {result['test_auc']:.4f} test_acc {result['test_acc']:.4f}")
        _say_next(after_classifier(result["run_id"]))

    command.__doc__ = doc
    main.command(name=arm)(command)


for _arm in DOWNSTREAM_ARMS:
    _downstream_command(_arm)


@main.command()
@_config_options(BaselineConfig, skip=("variant", "patch_size", "depth", "embed_dim", "num_heads"))
@click.option("--progress/--no-progress", default=True, show_default=True)
@clean_errors
def baseline(progress: bool, **settings: Any) -> None:
    """A classical baseline on the arms' split and labelled jets: the best single image observable,
    gradient boosting on image observables, or a small CNN (--kind observable|gbdt|cnn)."""
    from mae_tracker.baselines import run_baseline

    result = run_baseline(BaselineConfig(**settings), progress=progress)
    click.echo(f"run {result['run_id']}: test_auc {result['test_auc']:.4f} test_acc {result['test_acc']:.4f}")


def _mount_commands() -> None:
    """Commands whose modules carry their own click command (so `python -m` works on them too)."""
    from mae_tracker.server.launch import server as server_command
    from mae_tracker.pipeline.__main__ import main as pipeline_command
    from mae_tracker.pipeline.scaling_command import main as scaling_command
    from mae_tracker.sweep.__main__ import main as sweep_command

    main.add_command(sweep_command, name="sweep")
    main.add_command(pipeline_command, name="pipeline")
    main.add_command(scaling_command, name="scaling")
    main.add_command(server_command, name="server")


_mount_commands()


@main.command()
@click.argument("run_id")
@click.option("--metric", default=None,
              help="Validation metric that decides champion vs challenger (never a test_* metric); default "
                   "val_probe_auc (pretrain runs) or best_val_auc (finetune/probe/scratch runs). The run must "
                   "have logged its error (<metric>_se).")
@click.option("--goal", type=click.Choice(["maximize", "minimize"]), default="maximize", show_default=True)
@clean_errors
def promote(run_id: str, metric: str | None, goal: str) -> None:
    """Register a run's encoder (pretrain) or classifier (downstream) in its model family.

    Refused when its validation AUC's 95 % interval does not exclude chance (0.5). It becomes
    `challenger`, and `champion` only if the family has none or it beats the champion on the
    same data by more than the noise of the comparison."""
    from mae_tracker.registry.promotion import promote as run_promote

    result = run_promote(run_id, metric=metric, goal=goal)
    click.echo(f"{result.registered_model} version {result.version} is {result.alias}: {result.reason}")
    click.echo(f"load it with models:/{result.registered_model}@{result.alias}")
    click.echo(f"view it: {where_to_look(model_route(result.registered_model, result.version))}")


def _comma_list(kind: type) -> Callable[[Any, Any, str | None], list | None]:
    def parse(_ctx: Any, param: Any, value: str | None) -> list | None:
        if value is None:
            return None
        try:
            return [kind(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise click.BadParameter(f"expected a comma-separated list of {kind.__name__}s, got {value!r}",
                                     param=param) from None

    return parse


@main.command(name="label-efficiency")
@click.argument("encoder_uri", required=False, default="")
@click.option("--fractions", callback=_comma_list(float), default=None,
              help="Labelled fractions of the train split, comma-separated [default: 0.01,0.1,1].")
@click.option("--seeds", callback=_comma_list(int), default=None, help="Seeds, comma-separated [default: 0,1,2].")
@click.option("--arms", callback=_comma_list(str), default=None,
              help="Arms, comma-separated [default: finetune,probe,scratch].")
@click.option("--epochs", type=int, default=None, help="Epochs of every child run (default: each arm's).")
@click.option("--batch-size", type=int, default=None, help="Batch size of every child run.")
@click.option("--experiment", default="mae-tracker", show_default=True)
@click.option("--resume", default="", help="Parent run id of an earlier label-efficiency grid: finished children are kept.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@clean_errors
def label_efficiency(encoder_uri: str, fractions: list | None, seeds: list | None, arms: list | None,
                     epochs: int | None, batch_size: int | None, experiment: str, resume: str,
                     progress: bool) -> None:
    """Finetune, probe and scratch from ENCODER_URI at several labelled fractions and seeds,
    as child runs of one parent run that gets the curve and a CSV."""
    from mae_tracker.pipeline.label_efficiency import run_label_efficiency

    if not encoder_uri and not resume:
        raise click.UsageError("give an ENCODER_URI (runs:/<id>/encoder or models:/<name>@<alias>) or --resume")
    overrides = {key: value for key, value in (("epochs", epochs), ("batch_size", batch_size)) if value is not None}
    result = run_label_efficiency(encoder_uri, fractions=fractions, seeds=seeds, arms=arms,
                                  overrides=overrides or None, experiment=experiment, resume=resume,
                                  progress=progress)
    click.echo(result["table"].to_string(index=False))
    click.echo(f"parent run {result['run_id']}: {result['trained']} trained, {result['skipped']} already done")
    click.echo(f"view the grid: {run_where(result['run_id'])}")


@main.command()
@click.argument("encoder_uri")
@click.argument("data")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="HDF5 file for the latent vectors (written atomically), rows in the data's jet order.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@clean_errors
def encode(encoder_uri: str, data: str, out: Path, batch_size: int, progress: bool) -> None:
    """Compress DATA (a jet file, folder, glob or comma list) into the latent vectors of ENCODER_URI
    (runs:/<id>/encoder or models:/<name>@<alias>); prints the compression ratio and the MAE's reconstruction fidelity."""
    from mae_tracker.encode import encode_file

    figures = encode_file(encoder_uri, data, out, batch_size=batch_size, progress=progress)
    click.echo(f"wrote {figures['out']}: {figures['n_jets']} jets x {figures['latent_dim']} floats")
    click.echo(f"compression ratio {figures['compression_ratio_raw']:.1f}x raw, "
               f"{figures['compression_ratio_stored']:.1f}x as stored (lzf)")
    fidelity = figures.get("fidelity") or {}
    if fidelity.get("recon_mse") is not None:
        click.echo(f"reconstruction: mse {fidelity['recon_mse']:.3g} per pixel, channel totals off by "
                   f"{fidelity['recon_total_rel_error']:.1%} (energy-weighted, stored units)")
    else:
        click.echo(f"reconstruction fidelity not measured: {fidelity.get('reason', 'no MAE')}")


@main.command(name="migrate-model")
@click.argument("model_uri")
@click.option("--i-trust-this-pickle", "trust", is_flag=True,
              help="Required: unpickling runs any code stored in the model; only for models you trust.")
@clean_errors
def migrate_model(model_uri: str, trust: bool) -> None:
    """Convert a model logged as a pickle by an older mae-tracker (MODEL_URI: runs:/<id>/<name>,
    models:/<family>/<version> or @<alias>) into the safe format, once; aliases move with it."""
    from mae_tracker.registry.migration import migrate_model as run_migration

    result = run_migration(model_uri, trust_pickle=trust)
    click.echo(f"{model_uri}: safe copy logged as {result.model_uri}")
    if result.version is not None:
        moved = f", aliases {', '.join(result.aliases)} moved to it" if result.aliases else ""
        click.echo(f"registered as {result.registered_model} version {result.version}{moved}")


@main.command(name="sparse-copy")
@click.argument("data")
@click.option("--progress/--no-progress", default=True, show_default=True)
@clean_errors
def sparse_copy(data: str, progress: bool) -> None:
    """Build (or finish building) the sparse copy of DATA (a file, folder, glob or comma list) that
    runs with --sparse-copy true read: non-zero pixels only, memory-mapped, in the cache dir.
    Interrupt and rerun to resume."""
    from mae_tracker.train.data import build_sparse_copy

    copy = build_sparse_copy(data, progress=progress)
    size = sum(f.stat().st_size for f in copy.directory.iterdir())
    files = copy.info.files
    source = sum(Path(f).stat().st_size for f in files)
    what = "the file" if len(files) == 1 else f"the {len(files)} files"
    click.echo(f"{copy.directory}: {len(copy):,} jets, {copy.occupancy:.2%} of pixel values non-zero, "
               f"{size / 2**20:.1f} MiB ({what}: {source / 2**20:.1f} MiB)")


@main.command(name="prune-sparse-copies")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@clean_errors
def prune_sparse_copies(dry_run: bool) -> None:
    """Delete the sparse copies in the cache dir whose file (or any file of their dataset) is gone or
    has changed, with their interrupted builds and lock files. Copies of data as it is now are kept."""
    from mae_tracker.train.data import prune_sparse_copies as prune

    copies = prune(dry_run=dry_run)
    for copy in copies:
        if copy.stale:
            verb = "would delete" if dry_run else ("deleted" if copy.removed else "kept (being built)")
            click.echo(f"{verb} {copy.digest[:12]} ({copy.bytes / 2**20:.1f} MiB): {copy.stale}")
    gone = [c for c in copies if c.stale and (dry_run or c.removed)]
    click.echo(f"{len(gone)} of {len(copies)} sparse copies {'to delete' if dry_run else 'deleted'}, "
               f"{sum(c.bytes for c in gone) / 2**20:.1f} MiB")


@main.command()
@click.argument("source")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("report"),
              show_default=True, help="Folder for report.md, report.html and figures/.")
@click.option("--log/--no-log", "log_to_mlflow", default=True, show_default=True,
              help="Also log the report as artifacts (to the parent run, or a new run tagged kind=report).")
@clean_errors
def report(source: str, out_dir: Path, log_to_mlflow: bool) -> None:
    """Markdown + self-contained HTML report from SOURCE: an experiment name, a sweep parent run
    id or a label-efficiency parent run id. Every number comes from a run, with its id."""
    from mae_tracker.report import build_report

    paths = build_report(source, out_dir, log_to_mlflow=log_to_mlflow)
    click.echo(f"wrote {paths.markdown} and {paths.html}")
    if paths.logged_to:
        click.echo(f"logged to run {paths.logged_to}")
        click.echo(f"view it: {run_where(paths.logged_to)}")


if __name__ == "__main__":
    main()
