"""`finetune/probe/scratch --encoder-uri ...` without `--data` read the file the encoder was
pretrained on, checked by its sha256; when that file is gone or changed, one line asks for --data."""

from __future__ import annotations

import os
import shutil

import h5py
import mlflow
import pytest
from click.testing import CliRunner

from mae_tracker.cli import main
from mae_tracker.data.jetfile import file_digest
from mae_tracker.train.config import DownstreamConfig, PretrainConfig
from mae_tracker.train.data import prepare_data
from mae_tracker.train.pretrain import pretrain

EXPERIMENT = "test-encoder-data"


@pytest.fixture(scope="module")
def own_data_encoder(jets_file, tmp_path_factory):
    """A real (tiny) encoder pretrained on a file of its own: jets_file with one label flipped."""
    path = tmp_path_factory.mktemp("own-data") / "own.h5"
    shutil.copy(jets_file, path)
    with h5py.File(path, "r+") as h5:
        h5["y"][0] = 1 - h5["y"][0]
    result = pretrain(PretrainConfig(data=str(path), epochs=1, max_jets=64, batch_size=32, probe_train_jets=0,
                                     probe_val_jets=0, eval_jets=32, image_every=0, image_jets=1,
                                     experiment=EXPERIMENT), progress=False)
    return path, result["encoder_uri"]


def test_without_data_the_arms_read_the_encoders_file_or_ask_for_data(own_data_encoder, jets_file):
    path, uri = own_data_encoder
    for arm in ("finetune", "probe", "scratch"):
        data = prepare_data(DownstreamConfig.for_arm(arm, encoder_uri=uri), progress=False)
        data.reader.close()
        assert data.path == path and data.digest == file_digest(path)  # not the default dataset
    given = prepare_data(DownstreamConfig.for_arm("probe", encoder_uri=uri, data=str(jets_file)), progress=False)
    given.reader.close()
    assert given.path == jets_file  # --data wins

    runs_before = len(mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list"))
    changed = path.with_name("changed.h5")  # the file changes after pretraining (a new version of it)
    shutil.copy(path, changed)
    with h5py.File(changed, "r+") as h5:
        h5["y"][1] = 1 - h5["y"][1]
    os.replace(changed, path)
    with pytest.raises(ValueError, match=f"was pretrained on {path} \\(sha256 [0-9a-f]{{12}}\\), which has changed "
                                         "since \\(sha256 [0-9a-f]{12}\\); give the file with --data"):
        prepare_data(DownstreamConfig.for_arm("finetune", encoder_uri=uri), progress=False)
    path.unlink()
    result = CliRunner().invoke(main, ["probe", "--encoder-uri", uri, "--epochs", "1", "--no-progress"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"Error: encoder {uri} was pretrained on {path}, which is not here; give the file with --data"]
    assert len(mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")) == runs_before  # no run
