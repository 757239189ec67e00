"""encode_file: latent vectors of a logged encoder for a jet file, atomic, with compression figures."""

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mae_tracker.data.errors import DataError
from mae_tracker.encode import encode_file


@pytest.fixture(scope="module")
def pretrained(jets_file):
    from mae_tracker.train.config import PretrainConfig
    from mae_tracker.train.pretrain import pretrain

    return pretrain(PretrainConfig(data=str(jets_file), epochs=1, batch_size=32, probe_train_jets=64,
                                   probe_val_jets=64, eval_jets=64, image_jets=1), progress=False)


def test_encode_writes_latents_labels_and_provenance(pretrained, jets_file, tmp_path):
    from mae_tracker.data.jetfile import file_digest
    from mae_tracker.train.saved_model import load_model

    out = tmp_path / "latents.h5"
    figures = encode_file(pretrained["encoder_uri"], jets_file, out, batch_size=128, progress=False)
    with h5py.File(jets_file) as src:
        n, labels, pt = len(src["y"]), src["y"][()], src["pt"][()]
        first = torch.from_numpy(src["X_jets"][:4].transpose(0, 3, 1, 2).copy())
    with h5py.File(out) as f:
        latents, attrs = f["latents"][()], dict(f.attrs)
        np.testing.assert_array_equal(f["y"][()], labels)
        np.testing.assert_array_equal(f["pt"][()], pt)
    model, meta = load_model(pretrained["encoder_uri"], kind="encoder")
    dim = latents.shape[1]
    assert latents.shape == (n, dim) and latents.dtype == np.float32 and np.isfinite(latents).all()
    # rows are the encoder's features of the preprocessed images, in file order
    from mae_tracker.data.preprocess import Preprocessor

    pre = Preprocessor.from_dict(meta["preprocessing"])
    with torch.no_grad():
        expected = model.encoder.features(pre.transform(first)).numpy()
        # the logged encoder itself takes the raw channels-last rows
        np.testing.assert_allclose(model(first.permute(0, 2, 3, 1)).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(latents[:4], expected, rtol=1e-4, atol=1e-5)
    assert attrs["encoder_uri"] == pretrained["encoder_uri"] and attrs["data_sha256"] == file_digest(jets_file)
    assert json.loads(attrs["preprocessing"]) == meta["preprocessing"]
    assert attrs["pretrain_run_id"] == pretrained["run_id"] and list(attrs["class_names"]) == ["quark", "gluon"]
    assert figures["compression_ratio_raw"] == pytest.approx(3 * 32 * 32 / dim)
    assert figures["compression_ratio_stored"] > 0 and figures["latent_bytes_stored"] > 0
    assert figures["image_bytes_raw"] == n * 3 * 32 * 32 * 4
    fidelity = figures["fidelity"]
    assert np.isfinite(fidelity["recon_mse"]) and 0 <= fidelity["recon_mse"] < 1
    assert np.isfinite(fidelity["recon_total_rel_error"]) and fidelity["mae_uri"].endswith("/mae")
    assert json.loads(attrs["compression"])["compression_ratio_raw"] == figures["compression_ratio_raw"]
    # the same encoding twice is the same file content
    again = encode_file(pretrained["encoder_uri"], jets_file, tmp_path / "again.h5", progress=False)
    with h5py.File(tmp_path / "again.h5") as f:
        np.testing.assert_array_equal(f["latents"][()], latents)
    assert again["fidelity"]["recon_mse"] == pytest.approx(fidelity["recon_mse"])


def test_bad_inputs_one_line_errors_nothing_written(pretrained, tmp_path):
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("hello")
    out = tmp_path / "out.h5"
    with pytest.raises(DataError) as err:
        encode_file(pretrained["encoder_uri"], not_h5, out, progress=False)
    assert str(not_h5) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="file not found"):
        encode_file(pretrained["encoder_uri"], tmp_path / "missing.h5", out, progress=False)
    # wrong number of channels for this encoder
    two = tmp_path / "eg.h5"
    with h5py.File(two, "w") as f:
        f["X"] = np.zeros((4, 32, 32, 2), np.float32)
        f["y"] = np.array([0, 1, 0, 1], np.float32)
    with pytest.raises(DataError, match="2 channels"):
        encode_file(pretrained["encoder_uri"], two, out, progress=False)
    with pytest.raises(ValueError, match="cannot load (encoder|model)"):
        encode_file("runs:/0123456789abcdef/encoder", two, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eg.h5", "notes.h5"]


def test_an_output_that_is_the_input_is_refused_however_spelled(pretrained, jets_file, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from mae_tracker.cli import main
    from mae_tracker.data.jetfile import file_digest

    source = tmp_path / "jets.h5"
    shutil.copy(jets_file, source)
    digest = file_digest(source)
    (tmp_path / "link.h5").symlink_to(source)
    os.link(source, tmp_path / "hard.h5")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    spellings = (source, Path("../jets.h5"), tmp_path / "link.h5", tmp_path / "hard.h5", tmp_path / "sub/../jets.h5")
    for out in spellings:
        with pytest.raises(ValueError, match="is the input file") as err:
            encode_file(pretrained["encoder_uri"], source, out, progress=False)
        assert "\n" not in str(err.value)
    result = CliRunner().invoke(main, ["encode", pretrained["encoder_uri"], "../jets.h5",
                                       "--out", str(tmp_path / "link.h5"), "--no-progress"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "is the input file" in result.output and "--out" in result.output
    assert file_digest(source) == digest  # the jets are untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.h5", "jets.h5", "link.h5", "sub"]
    assert list((tmp_path / "sub").iterdir()) == []


def test_interrupted_encode_leaves_no_file(pretrained, jets_file, tmp_path, monkeypatch):
    import mae_tracker.encode as enc

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(enc, "_fidelity", boom)  # after every latent has been written
    out = tmp_path / "x.h5"
    out.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        encode_file(pretrained["encoder_uri"], jets_file, out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["x.h5"] and out.read_bytes() == b"old"
