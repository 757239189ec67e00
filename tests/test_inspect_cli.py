"""`mae-tracker inspect`: numbers from a streamed pass, plots, and clean errors for bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from jet_h5 import BAD_FILES, sparse_images, write_jets

from mae_tracker.cli import main
from mae_tracker.data.describe import format_summary, plot_mean_images, summarize


@pytest.fixture
def qg_file(tmp_path):
    images = sparse_images(50, c=3, h=16, w=16, seed=3)
    images[1::2, 0] *= 3.0  # gluons (y=0 at odd rows) get more track pT
    labels = np.array([1, 0] * 25)
    labels[:4] = 1  # 27 quarks, 23 gluons
    return write_jets(tmp_path / "qg.h5", images, labels,
                      attrs={"label_convention": "1=quark,0=gluon", "seed": 7})


def test_summary_numbers_match_numpy(qg_file):
    path, images, labels = qg_file
    summary = summarize(path, with_mean_images=True)
    assert summary["n_jets"] == 50 and summary["image_shape"] == [3, 16, 16]
    assert summary["classes"]["quark"]["count"] == 27 and summary["classes"]["gluon"]["count"] == 23
    sums = images.astype(np.float64).sum(axis=(2, 3))
    for c, ch in enumerate(summary["channels"]):
        assert ch["name"] == ("Tracks", "ECAL", "HCAL")[c]
        assert ch["occupancy"] == pytest.approx(np.count_nonzero(images[:, c]) / (50 * 16 * 16))
        assert ch["occupancy_by_class"]["gluon"] == pytest.approx(np.count_nonzero(images[labels == 0, c]) / (23 * 256))
        assert ch["sum_mean"] == pytest.approx(sums[:, c].mean())
        assert ch["sum_std"] == pytest.approx(sums[:, c].std())
        assert ch["sum_mean_by_class"]["quark"] == pytest.approx(sums[labels == 1, c].mean())
        assert ch["max_pixel"] == pytest.approx(images[:, c].max())
    np.testing.assert_allclose(summary["mean_images"]["gluon"], images[labels == 0].mean(axis=0), rtol=1e-5)
    assert set(summary["extras"]) == {"pt", "m0"} and 70 <= summary["extras"]["pt"]["min"] < 200
    plain = summarize(path)
    assert "mean_images" not in plain
    json.dumps(plain)  # JSON-able for logging


def test_format_summary_mentions_the_essentials(qg_file):
    path, _, _ = qg_file
    text = format_summary(summarize(path))
    for needle in ("50", "3 x 16 x 16", "channels-last", "quark (y=1): 27 (54.0%)",
                   "gluon (y=0): 23 (46.0%)", "Tracks", "HCAL", "pt", "m0"):
        assert needle in text


def test_cli_inspect_prints_summary_and_saves_plot(qg_file, tmp_path):
    path, _, _ = qg_file
    out_png = tmp_path / "plots" / "means.png"
    result = CliRunner().invoke(main, ["inspect", str(path), "--plot", str(out_png)])
    assert result.exit_code == 0, result.output
    assert "quark (y=1): 27" in result.output and f"saved {out_png}" in result.output
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 5000


def test_electron_photon_file_inspects_and_plots(tmp_path):
    images = sparse_images(10, c=2, h=32, w=32)
    images[:, 1] = 0.0  # an all-zero channel must not break the log colour scale
    path, _, _ = write_jets(tmp_path / "ep.h5", images, images_key="X", extras=())
    summary = summarize(path)
    # an old X file without attributes is the CMS electron/photon pair (data.tasks.class_names, the one reading)
    assert summary["schema"] == "e2e-electron-photon" and list(summary["classes"]) == ["electron", "photon"]
    assert [c["name"] for c in summary["channels"]] == ["energy", "time"]
    assert summary["channels"][1]["occupancy"] == 0.0
    assert plot_mean_images(path, tmp_path / "ep.png").stat().st_size > 0


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_cli_bad_file_exits_nonzero_with_one_clean_line(tmp_path, case):
    build, phrase = BAD_FILES[case]
    if case == "directory":  # inspect takes a folder as a dataset now: an empty one has no data files
        phrase = "no HDF5 or Parquet files"
    path = build(tmp_path)
    result = CliRunner().invoke(main, ["inspect", str(path)])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # handled, not a crash
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1
    assert f"Error: {path}" in error_lines[0] and phrase in error_lines[0]
