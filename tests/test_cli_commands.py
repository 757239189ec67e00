"""The new `mae-tracker` commands are thin shells: they call the library and print its answer.

They reuse the session's cached pretrain run and label-efficiency grid (tests/label_efficiency_grid.py).
"""

from __future__ import annotations

import re

import h5py
import mlflow
from click.testing import CliRunner

from mae_tracker.cli import main
import label_efficiency_grid as shared


def test_promote_command_prints_the_alias_and_the_uri(jets_file):
    run_id = shared.pretrained(jets_file)["run_id"]
    result = CliRunner().invoke(main, ["promote", run_id])
    assert result.exit_code == 0, result.output
    assert "mae-vit-32x32x3 version" in result.output and "models:/mae-vit-32x32x3@" in result.output
    refused = CliRunner().invoke(main, ["promote", run_id, "--metric", "no_such_metric"])
    assert refused.exit_code == 1 and len(refused.output.strip().splitlines()) == 1
    assert "no_such_metric" in refused.output and "Traceback" not in refused.output


def test_encode_command_writes_latents_and_reports_compression(jets_file, tmp_path):
    encoder_uri = shared.pretrained(jets_file)["encoder_uri"]
    out = tmp_path / "latents.h5"
    result = CliRunner().invoke(main, ["encode", encoder_uri, str(jets_file), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "compression ratio 48.0x raw" in result.output  # 32*32*3 pixels -> 64 floats
    with h5py.File(out) as f:
        assert f["latents"].shape == (1000, 64) and f.attrs["encoder_uri"] == encoder_uri


def test_label_efficiency_resume_and_report_commands(jets_file, tmp_path):
    parent = shared.grid(jets_file)["run_id"]
    resumed = CliRunner().invoke(main, ["label-efficiency", "--resume", parent, "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert f"parent run {parent}: 0 trained, 12 already done" in resumed.output
    report = CliRunner().invoke(main, ["report", parent, "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    assert (tmp_path / "report" / "report.html").exists()
    assert f"logged to run {parent}" in report.output
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent, "report")}
    assert "report/report.md" in artifacts
    missing = CliRunner().invoke(main, ["label-efficiency", "--no-progress"])
    assert missing.exit_code != 0 and "ENCODER_URI" in missing.output


def test_baseline_command_logs_a_run_and_rejects_a_bad_kind(jets_file):
    result = CliRunner().invoke(main, ["baseline", "--kind", "gbdt", "--data", str(jets_file), "--experiment",
                                       "test-cli-baseline", "--no-progress"])
    assert result.exit_code == 0, result.output
    run_id = re.search(r"^run ([0-9a-f]{32}): ", result.output, re.MULTILINE).group(1)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["arm"] == "gbdt"
    assert f"test_auc {run.data.metrics['test_auc']:.4f}" in result.output
    refused = CliRunner().invoke(main, ["baseline", "--kind", "svm", "--data", str(jets_file)])
    assert refused.exit_code != 0 and "kind must be one of" in refused.output and "Traceback" not in refused.output
