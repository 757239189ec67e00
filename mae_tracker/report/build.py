"""Assemble the report from MLflow runs: tables, ROC curves, reconstruction grids, label efficiency."""

from __future__ import annotations

import datetime
import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd

from mae_tracker import ui_links
from mae_tracker.baselines.config import BASELINES
from mae_tracker.report import collect, figures, render
from mae_tracker.report.render import Block, Heading, Image, Paragraph, RunRef, Table
from mae_tracker.train import plots
from mae_tracker.train.config import DOWNSTREAM_ARMS
from mae_tracker.train.tracking import configure_tracking

MAX_GRIDS = 3


@dataclass
class ReportPaths:
    out_dir: Path
    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    logged_to: str = ""  # run id that holds the report as artifacts ("" when not logged)


def build_report(source: str, out_dir: Path, *, log_to_mlflow: bool = True) -> ReportPaths:
    """Write ``report.md`` and a self-contained ``report.html`` (plus ``figures/``) into ``out_dir``.

    ``source`` is an experiment name, a sweep parent run id or a label-efficiency parent run id.
    Tables: linear probing, fine-tuning, scratch (test accuracy and AUC with the model and the
    mask ratio of the pretrain run the encoder came from) and the pretrain runs' reconstruction
    loss (train vs test); figures: ROC curves of the arms (standard and background rejection),
    reconstruction grids and, where a label-efficiency grid is found, its curve. Every number
    is read from a run and printed beside that run's id; runs that did not finish are listed as
    excluded. With ``log_to_mlflow`` the files are logged under ``report/`` to the parent run, or,
    for an experiment, to a new run tagged ``kind=report``.
    """
    configure_tracking()
    client = mlflow.MlflowClient()
    src = collect.resolve_source(client, source)
    frame = collect.runs_frame(collect.source_runs(client, src))
    if frame.empty:  # before anything is written: no folder, no files, no report run
        what = _what(src).replace("`", "'")
        raise ValueError(f"{what} holds no runs of the arms (pretrain, finetune, probe, scratch) or baselines: "
                         "nothing to report")
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    try:
        return _write(client, src, source, frame, out_dir, log_to_mlflow)
    except BaseException:
        if created:  # nothing half-written is left behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def _write(client: mlflow.MlflowClient, src: collect.Source, source: str, frame: pd.DataFrame, out_dir: Path,
           log_to_mlflow: bool) -> ReportPaths:
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    finished = frame[frame.status == "FINISHED"]

    blocks: list[Block] = [Heading(f"mae-tracker report: {src.name}", 1), Paragraph(_preamble(src, frame)),
                           Paragraph(_where_in_ui(src))]
    for arm, title in (("probe", "Linear probing"), ("finetune", "Fine-tuning"), ("scratch", "Scratch (no pretraining)")):
        blocks += [Heading(title), _arm_table(finished, arm)]
    if not finished.empty and finished.arm.isin(BASELINES).any():
        blocks += [Heading("Classical baselines (same labelled and test jets)"), _baseline_table(finished)]
    blocks += [Heading("Reconstruction loss (pretraining)"), _recon_table(finished)]
    with tempfile.TemporaryDirectory() as tmp:
        chosen = _roc_section(client, finished, fig_dir, Path(tmp), blocks)
        _grid_section(client, finished, chosen, fig_dir, Path(tmp), blocks)
    for parent_id in src.label_efficiency_parents:
        _label_efficiency_section(client, parent_id, fig_dir, blocks)
    blocks += _excluded_section(frame)

    markdown_path = out_dir / "report.md"
    html_path = out_dir / "report.html"
    markdown_path.write_text(render.markdown(blocks))
    html_path.write_text(render.html_page(blocks, f"mae-tracker report: {src.name}", out_dir))
    paths = ReportPaths(out_dir, markdown_path, html_path, sorted(fig_dir.glob("*.png")))
    if log_to_mlflow:
        paths.logged_to = _log(client, src, source, paths)
    return paths


def _num(value: object, digits: int = 4) -> str:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "—"
    return "—" if math.isnan(number) else f"{number:.{digits}f}"


def _int(value: object) -> str:
    try:
        return "—" if pd.isna(value) else str(int(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "—"


def _what(src: collect.Source) -> str:
    return {"experiment": f"experiment `{src.name}`", "sweep": f"sweep parent run `{src.parent_run_id}`",
            "label-efficiency": f"label-efficiency parent run `{src.parent_run_id}`",
            "parent": f"parent run `{src.parent_run_id}`"}[src.kind]


def _where_in_ui(src: collect.Source) -> str:
    """The source in the MLflow UI's training view: its URL, and the `mlflow ui` command without a server."""
    route = (ui_links.experiment_route(src.experiment_id) if src.kind == "experiment"
             else ui_links.run_route(src.experiment_id, src.parent_run_id))
    command = ui_links.ui_command()
    url = ui_links.ui_url(route)
    return f"In the MLflow UI: {url}" if command is None else f"In the MLflow UI: `{command}`, then {url}"


def _preamble(src: collect.Source, frame: pd.DataFrame) -> str:
    what = _what(src)
    uri = re.sub(r"//[^/@]*@", "//***@", mlflow.get_tracking_uri())  # no passwords in reports
    n_ok = int((frame.status == "FINISHED").sum()) if not frame.empty else 0
    return (f"Source: {what} in `{uri}`, read {datetime.datetime.now().isoformat(timespec='seconds')}. "
            f"{n_ok} finished arm runs. Accuracy and AUC are on the test split, for the epoch each run "
            "selected on its validation split. Every number is a value stored in the run whose id "
            "(first 8 characters) stands beside it.")


def _arm_table(frame: pd.DataFrame, arm: str) -> Block:
    rows = frame[frame.arm == arm] if not frame.empty else frame
    if rows.empty:
        return Paragraph(f"No finished {arm} runs.")
    rows = rows.sort_values(["model", "mask_ratio", "labelled_jets", "seed", "start_time"])
    columns = ["Model", "Mask ratio", "Labelled jets", "Seed", "Accuracy", "AUC", "Run", "Pretrain run"]
    table = [[r.model, _num(r.mask_ratio, 2), _int(r.labelled_jets), _int(r.seed), _num(r.test_acc),
              _num(r.test_auc), RunRef(r.run_id), RunRef(r.pretrain_run_id) if r.pretrain_run_id else "—"]
             for r in rows.itertuples()]
    if arm == "scratch":  # the mask ratio means nothing without pretraining
        columns = [c for c in columns if c != "Mask ratio"]
        table = [row[:1] + row[2:] for row in table]
        columns[-1] = "Architecture from"
    return Table(columns, table)


def _baseline_table(frame: pd.DataFrame) -> Block:
    rows = frame[frame.arm.isin(BASELINES)].sort_values(["arm", "labelled_jets", "seed", "start_time"])
    return Table(["Baseline", "Labelled jets", "Seed", "Accuracy", "AUC", "Run"],
                 [[r.arm, _int(r.labelled_jets), _int(r.seed), _num(r.test_acc), _num(r.test_auc), RunRef(r.run_id)]
                  for r in rows.itertuples()])


def _recon_table(frame: pd.DataFrame) -> Block:
    rows = frame[frame.arm == "pretrain"] if not frame.empty else frame
    if rows.empty:
        return Paragraph("No finished pretrain runs.")
    rows = rows.sort_values(["model", "mask_ratio", "start_time"])
    return Table(["Model", "Mask ratio", "Epochs", "Train loss", "Test loss", "Val probe AUC", "Run"],
                 [[r.model, _num(r.mask_ratio, 2), _int(r.param_epochs), _num(r.train_eval_loss_final),
                   _num(r.test_loss_final), _num(r.val_probe_auc), RunRef(r.run_id)] for r in rows.itertuples()])


def _roc_section(client: mlflow.MlflowClient, frame: pd.DataFrame, fig_dir: Path, tmp: Path,
                 blocks: list[Block]) -> list[str]:
    """One run per arm (most labelled jets, then best validation AUC: never chosen on test),
    redrawn from its ``test_predictions.csv``. Returns the chosen run ids."""
    blocks.append(Heading("ROC curves"))
    curves: plots.Curves = {}
    chosen, lines = [], []
    compared = DOWNSTREAM_ARMS + BASELINES
    downstream = frame[frame.arm.isin(compared)] if not frame.empty else frame
    for arm in compared:
        rows = downstream[downstream.arm == arm]
        if rows.empty:
            continue
        val = rows.best_val_auc.fillna(rows.val_auc).fillna(-1.0)
        rows = rows.assign(sel_val=val).sort_values(["labelled_jets", "sel_val"], ascending=False)
        for r in rows.itertuples():
            local = collect.download_artifact(client, r.run_id, "test_predictions.csv", str(tmp / r.run_id))
            if local is None:
                continue
            predictions = pd.read_csv(local)
            curves[f"{arm} {r.run}"] = (predictions["label"].to_numpy(), predictions["score"].to_numpy())
            chosen.append(r.run_id)
            lines.append(f"{arm}: run `{r.run}` ({_int(r.labelled_jets)} labelled jets, validation AUC "
                         f"{_num(r.sel_val)}, test AUC {_num(r.test_auc)})")
            break
    if not curves:
        blocks.append(Paragraph("No finished downstream run has a `test_predictions.csv` artifact."))
        return chosen
    signal, background = collect.class_names(downstream)
    roc = plots.roc_figure(curves, "ROC on the test split", signal, background)
    rejection = plots.rejection_figure(curves, f"{background} rejection on the test split", signal, background)
    figures.save(roc, str(fig_dir / "roc.png"))
    figures.save(rejection, str(fig_dir / "roc_rejection.png"))
    blocks += [Paragraph("One run per arm, the one with the most labelled jets and then the best validation "
                         "AUC: " + "; ".join(lines) + "."),
               Image("figures/roc.png", "ROC curves of the arms (test split)"),
               Image("figures/roc_rejection.png", f"{background} rejection 1/eps_b against {signal} efficiency eps_s")]
    return chosen


def _grid_section(client: mlflow.MlflowClient, frame: pd.DataFrame, chosen: list[str], fig_dir: Path,
                  tmp: Path, blocks: list[Block]) -> None:
    pretrain = frame[frame.arm == "pretrain"] if not frame.empty else frame
    if pretrain.empty:
        return
    wanted = [pid for pid in frame.set_index("run_id").loc[chosen, "pretrain_run_id"] if pid] if chosen else []
    order = list(dict.fromkeys(wanted)) or list(pretrain.sort_values("test_loss_final").run_id)
    blocks.append(Heading("Reconstructions (test jets, last logged epoch)"))
    for run_id in [pid for pid in order if pid in set(pretrain.run_id)][:MAX_GRIDS]:
        artifact = collect.latest_artifact(client, run_id, "reconstructions", r"^test_epoch_\d+\.png$")
        local = artifact and collect.download_artifact(client, run_id, artifact, str(tmp / run_id))
        if not local:
            blocks.append(Paragraph(f"Run `{run_id[:8]}` has no reconstruction grid."))
            continue
        name = f"reconstructions_{run_id[:8]}.png"
        shutil.copyfile(local, fig_dir / name)
        row = pretrain[pretrain.run_id == run_id].iloc[0]
        blocks.append(Image(f"figures/{name}", f"Pretrain run {run_id[:8]}: {row.model}, mask ratio "
                                               f"{_num(row.mask_ratio, 2)}, {artifact}"))


def _label_efficiency_section(client: mlflow.MlflowClient, parent_id: str, fig_dir: Path,
                              blocks: list[Block]) -> None:
    table = collect.label_efficiency_frame(client, parent_id)
    blocks.append(Heading(f"Label efficiency (parent run {parent_id[:8]})"))
    if table.empty:
        blocks.append(Paragraph("No finished children yet."))
        return
    name = f"label_efficiency_{parent_id[:8]}.png"
    figures.save(figures.label_efficiency_figure(table), str(fig_dir / name))
    summary = []
    for (arm, jets), group in table.groupby(["arm", "labelled_jets"], sort=True):
        summary.append([arm, str(jets), str(len(group)), _num(group.test_auc.mean()), _num(group.test_auc.min()),
                        _num(group.test_auc.max()), ", ".join(r[:8] for r in group.run_id)])
    blocks += [Image(f"figures/{name}", "Test AUC against labelled jets: mean over seeds, min-max band"),
               Table(["Arm", "Labelled jets", "Seeds", "Mean AUC", "Min AUC", "Max AUC", "Runs"], summary)]


def _excluded_section(frame: pd.DataFrame) -> list[Block]:
    if frame.empty:
        return [Paragraph("No arm runs found.")]
    bad = frame[frame.status != "FINISHED"]
    if bad.empty:
        return [Paragraph("No runs were excluded: every arm run found had finished.")]
    return [Heading("Excluded runs"),
            Paragraph(f"{len(bad)} runs did not finish (failed, killed or still running); none of their "
                      "numbers appear above."),
            Table(["Run", "Arm", "Status", "Name"],
                  [[RunRef(r.run_id), r.arm, r.status, r.run_name or ""] for r in bad.itertuples()])]


def _log(client: mlflow.MlflowClient, src: collect.Source, source: str, paths: ReportPaths) -> str:
    if src.parent_run_id:
        run_id = src.parent_run_id
    else:
        run_id = client.create_run(src.experiment_id, run_name=f"report-{src.name}",
                                   tags={"kind": "report", "report_source": source}).info.run_id
    client.log_artifact(run_id, str(paths.markdown), "report")
    client.log_artifact(run_id, str(paths.html), "report")
    for figure in paths.figures:
        client.log_artifact(run_id, str(figure), "report/figures")
    if not src.parent_run_id:
        client.set_terminated(run_id, "FINISHED")
    return run_id

