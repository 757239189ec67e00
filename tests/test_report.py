"""The report: every number in its tables is the value stored in the run named beside it."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from label_efficiency_grid import EXPERIMENT, grid, pretrained
from mae_tracker.report import build_report

ARM_TABLES = {"Linear probing": "probe", "Fine-tuning": "finetune", "Scratch (no pretraining)": "scratch"}


class _Tables(HTMLParser):
    """{heading: [row dicts]} from the report's HTML; run cells hold the full id (title attribute)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.heading, self.text, self.cell, self.row, self.columns = "", "", None, [], []
        self.in_heading = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("h1", "h2"):
            self.in_heading, self.heading = True, ""
        elif tag in ("td", "th"):
            self.cell = ""
        elif tag == "code" and self.cell is not None and "title" in attrs:
            self.cell = attrs["title"]
            self.cell_fixed = True
        elif tag == "table":
            self.columns = []
            self.tables[self.heading] = []

    def handle_endtag(self, tag):
        if tag in ("h1", "h2"):
            self.in_heading = False
        elif tag in ("td", "th"):
            if tag == "th":
                self.columns.append(self.cell)
            else:
                self.row.append(self.cell)
            self.cell, self.cell_fixed = None, False
        elif tag == "tr" and self.row:
            self.tables[self.heading].append(dict(zip(self.columns, self.row)))
            self.row = []

    def handle_data(self, data):
        if self.in_heading:
            self.heading += data
        elif self.cell is not None and not getattr(self, "cell_fixed", False):
            self.cell += data


def html_tables(path: Path) -> dict[str, list[dict[str, str]]]:
    parser = _Tables()
    parser.feed(path.read_text())
    return parser.tables


def markdown_tables(path: Path) -> dict[str, list[dict[str, str]]]:
    tables: dict[str, list[dict[str, str]]] = {}
    heading, columns = "", []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            heading, columns = line.lstrip("#").strip(), []
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip().strip("`") for c in line.strip().strip("|").split(" | ")]
            if not columns:
                columns = cells
                tables[heading] = []
            else:
                tables[heading].append(dict(zip(columns, cells)))
    return tables


def fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}"


@pytest.fixture(scope="module")
def le_grid(jets_file):
    return grid(jets_file)


@pytest.fixture(scope="module")
def parent_report(le_grid, tmp_path_factory):
    return build_report(le_grid["run_id"], tmp_path_factory.mktemp("report-parent"))


def test_tables_hold_the_stored_metrics_with_run_ids(parent_report, le_grid, jets_file):
    client = mlflow.MlflowClient()
    pretrain_id = pretrained(jets_file)["run_id"]
    pretrain_run = client.get_run(pretrain_id)
    children = {r.info.run_id: r for r in client.search_runs(
        [pretrain_run.info.experiment_id], f"tags.mlflow.parentRunId = '{le_grid['run_id']}'")}
    html, md = html_tables(parent_report.html), markdown_tables(parent_report.markdown)
    for title, arm in ARM_TABLES.items():
        rows = html[title]
        finished = {i for i, r in children.items() if r.info.status == "FINISHED" and r.data.tags["arm"] == arm}
        assert {row["Run"] for row in rows} == finished and len(rows) == 4
        md_rows = {row["Run"]: row for row in md[title]}
        for row in rows:
            metrics = client.get_run(row["Run"]).data.metrics
            assert row["Accuracy"] == fmt(metrics["test_acc"]) and row["AUC"] == fmt(metrics["test_auc"])
            assert md_rows[row["Run"][:8]]["AUC"] == row["AUC"] and md_rows[row["Run"][:8]]["Accuracy"] == row["Accuracy"]
            assert row.get("Pretrain run", row.get("Architecture from")) == pretrain_id
            if arm != "scratch":
                assert row["Mask ratio"] == fmt(float(pretrain_run.data.params["mask_ratio"]), 2)
            assert row["Model"].startswith(pretrain_run.data.params["variant"])
    (recon,) = html["Reconstruction loss (pretraining)"]
    assert recon["Run"] == pretrain_id
    assert recon["Train loss"] == fmt(pretrain_run.data.metrics["train_eval_loss"])
    assert recon["Test loss"] == fmt(pretrain_run.data.metrics["test_loss"])
    summary = html[f"Label efficiency (parent run {le_grid['run_id'][:8]})"]
    assert len(summary) == 6  # 3 arms x 2 label counts
    for row in summary:
        ids = row["Runs"].split(", ")
        aucs = [children[next(i for i in children if i.startswith(s))].data.metrics["test_auc"] for s in ids]
        assert row["Mean AUC"] == fmt(sum(aucs) / len(aucs)) and row["Max AUC"] == fmt(max(aucs))


def test_html_is_self_contained_and_the_report_is_logged_to_the_parent(parent_report, le_grid):
    page = parent_report.html.read_text()
    # Nothing is fetched from elsewhere; links a reader clicks (the MLflow UI's) are fine.
    assert re.search(r'<a href="http://[^"]*#/[^"]*\?workflowType=machine_learning">', page)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", re.sub(r'<a href="[^"]*">', "", page))
    assert "<script" not in page and "<link" not in page
    images = re.findall(r'<img [^>]*src="([^"]*)"', page)
    assert len(images) >= 4 and all(src.startswith("data:image/png;base64,") for src in images)
    names = {p.name for p in parent_report.figures}
    assert {"roc.png", "roc_rejection.png", f"label_efficiency_{le_grid['run_id'][:8]}.png"} <= names
    assert any(n.startswith("reconstructions_") for n in names)
    assert parent_report.logged_to == le_grid["run_id"]
    client = mlflow.MlflowClient()
    logged = {a.path for a in client.list_artifacts(le_grid["run_id"], "report")}
    assert {"report/report.md", "report/report.html", "report/figures"} <= logged
    figures = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(le_grid["run_id"], "report/figures")}
    assert figures == names


def test_experiment_report_excludes_failed_runs_and_logs_to_a_report_run(le_grid, tmp_path):
    client = mlflow.MlflowClient()
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    failed = client.create_run(experiment_id, run_name="crashed-finetune", tags={"arm": "finetune"}).info.run_id
    client.log_metric(failed, "test_auc", 0.123456)
    client.set_terminated(failed, "FAILED")
    paths = build_report(EXPERIMENT, tmp_path)
    tables = html_tables(paths.html)
    assert failed not in {row["Run"] for row in tables["Fine-tuning"]}
    assert failed in {row["Run"] for row in tables["Excluded runs"]}
    assert "0.1235" not in paths.markdown.read_text()
    assert f"Label efficiency (parent run {le_grid['run_id'][:8]})" in tables
    report_run = client.get_run(paths.logged_to)
    assert report_run.data.tags["kind"] == "report" and report_run.info.status == "FINISHED"
    assert report_run.info.experiment_id == experiment_id
    assert {"report/report.md", "report/report.html"} <= {a.path for a in client.list_artifacts(paths.logged_to, "report")}


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither an MLflow experiment name nor a run id"):
        build_report("no-such-experiment", tmp_path, log_to_mlflow=False)


def test_an_empty_experiment_is_one_line_and_nothing_is_written(tmp_path):
    from mae_tracker.cli import main
    from mae_tracker.train.tracking import ensure_experiment

    experiment_id = ensure_experiment("test-report-empty")
    client = mlflow.MlflowClient()
    other = client.create_run(experiment_id, tags={"kind": "report"}).info.run_id  # not an arm run
    client.set_terminated(other, "FINISHED")
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", "test-report-empty", "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        "Error: experiment 'test-report-empty' holds no runs of the arms (pretrain, finetune, probe, scratch) or "
        "baselines: nothing to report"]
    assert not out.exists()
    assert len(client.search_runs([experiment_id])) == 1  # no report run either


def test_sweep_parent_report_reads_arm_runs_nested_under_trials(tmp_path):
    """A sweep parent -> trial -> arm runs hierarchy (written directly, no training): the report
    finds the nested runs, joins the mask ratio and logs itself to the sweep parent."""
    from mae_tracker.train.tracking import ensure_experiment

    client = mlflow.MlflowClient()
    experiment_id = ensure_experiment("test-report-sweep")
    parent = client.create_run(experiment_id, run_name="sweep", tags={"sweep_study": "quick"}).info.run_id
    trial = client.create_run(experiment_id, run_name="trial-0", tags={"mlflow.parentRunId": parent}).info.run_id
    pre = client.create_run(experiment_id, tags={"mlflow.parentRunId": trial, "arm": "pretrain"}).info.run_id
    for key, value in {"variant": "vit-nano", "depth": "2", "mask_ratio": "0.6", "epochs": "3"}.items():
        client.log_param(pre, key, value)
    client.log_metric(pre, "train_eval_loss", 0.5, step=0)
    client.log_metric(pre, "train_eval_loss", 0.25, step=1)  # the final (latest step) value is reported
    client.log_metric(pre, "test_loss", 0.3, step=1)
    probe = client.create_run(experiment_id, tags={"mlflow.parentRunId": trial, "arm": "probe",
                                                   "pretrain_run_id": pre}).info.run_id
    client.log_param(probe, "labelled_jets", "300")
    client.log_metric(probe, "test_auc", 0.81234)
    client.log_metric(probe, "test_acc", 0.7)
    for run_id in (pre, probe, trial, parent):
        client.set_terminated(run_id, "FINISHED")

    paths = build_report(parent, tmp_path)
    tables = html_tables(paths.html)
    (row,) = tables["Linear probing"]
    assert (row["Run"], row["AUC"], row["Accuracy"], row["Mask ratio"]) == (probe, "0.8123", "0.7000", "0.60")
    assert row["Model"] == "vit-nano (vit, depth 2, dim 64)" and row["Labelled jets"] == "300"
    (recon,) = tables["Reconstruction loss (pretraining)"]
    assert (recon["Run"], recon["Train loss"], recon["Test loss"]) == (pre, "0.2500", "0.3000")
    assert "sweep parent run" in paths.markdown.read_text()
    assert "test_predictions.csv" in paths.markdown.read_text()  # said why there is no ROC figure
    assert paths.logged_to == parent
    assert "report/report.html" in {a.path for a in client.list_artifacts(parent, "report")}


def test_roc_figures_name_the_task_classes(parent_report, jets_file):
    """The ROC section names the file's classes (here quark/gluon), from the runs' class_names tag,
    else the data file's attributes (runs logged before the tag), else "signal"/"background"."""
    import pandas as pd

    from mae_tracker.report import collect

    assert "gluon rejection 1/eps_b against quark efficiency eps_s" in parent_report.markdown.read_text()
    frame = pd.DataFrame({"class_names": ["", "top,QCD"], "data_path": ["", str(jets_file)]})
    assert collect.class_names(frame) == ("top", "QCD")
    assert collect.class_names(frame.assign(class_names="")) == ("quark", "gluon")
    assert collect.class_names(frame.assign(class_names="", data_path="/nowhere.h5")) == ("signal", "background")
