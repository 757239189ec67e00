"""Datasets (a folder, a glob, a list of files; HDF5 or Parquet) through the arms, the commands and
the sweep: every file recorded, splits that stay put when a file is added, bad files refused in one
line before any run exists. Data written here: CMS-layout Parquet (doubles, channels first, small
row groups, several files) and the e/gamma class-per-file HDF5 pair; tiny images, one epoch."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import mlflow
import numpy as np
import pytest
from click.testing import CliRunner

from jet_parquet import jet_images, write_cms_parquet, write_egamma_pair
from mae_tracker.cli import main
from mae_tracker.data.dataset import open_dataset
from mae_tracker.data.jetfile import file_digest, make_splits
from mae_tracker.train import data as train_data
from mae_tracker.train.config import PretrainConfig
from mae_tracker.train.data import prepare_data

TINY = ["--epochs", "1", "--batch-size", "16", "--num-threads", "1", "--loader-workers", "0", "--no-progress"]
PRETRAIN = ["--image-jets", "1", "--eval-jets", "32", "--probe-train-jets", "32", "--probe-val-jets", "16", *TINY]
CMS_NAME = "QCDToGGQQ_IMGjet_RH1all_jet0_run{}_n{}.test.snappy.parquet"


def _cms_folder(folder: Path, sizes: tuple[int, ...] = (48, 40, 56)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_cms_parquet(folder / CMS_NAME.format(i, n), jet_images(n, 3, 12, 12, seed=i),
                              np.arange(n) % 2, row_group_size=4) for i, n in enumerate(sizes)]


def _invoke(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stdout, result.stderr


def _run(run_id: str) -> mlflow.entities.Run:
    return mlflow.MlflowClient().get_run(run_id)


def _run_id(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("run ")).split()[1].rstrip(":")


def _check_recorded(run: mlflow.entities.Run, files: list[Path]) -> None:
    """The run records the dataset digest, n_files, the scheme and every file (input + dataset.json)."""
    digest = open_dataset(files).digest
    assert run.data.tags["data_sha256"] == digest
    assert run.data.params["n_files"] == str(len(files)) and run.data.params["split_scheme"] == "per-file-hash"
    per_file = {t.key: t.value for i in run.inputs.dataset_inputs for t in i.tags if t.key == "sha256"}
    inputs = {dict((t.key, t.value) for t in i.tags).get("path"): dict((t.key, t.value) for t in i.tags)
              for i in run.inputs.dataset_inputs if any(t.value == "file" for t in i.tags)}
    assert per_file and set(inputs) == {str(f) for f in files}
    for path in files:
        assert inputs[str(path)]["sha256"] == file_digest(path)
    described = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/dataset.json")
    assert described["digest"] == digest and described["n_files"] == len(files)
    assert sorted(f["path"] for f in described["files"]) == sorted(str(f) for f in files)


@pytest.mark.slow
def test_cms_parquet_folder_pretrains_and_a_glob_finetunes(tmp_path):
    files = _cms_folder(tmp_path / "qg")
    code, out, err = _invoke(["pretrain", "--data", str(tmp_path / "qg"), "--patch-size", "4", *PRETRAIN])
    assert code == 0, err
    pretrain_run = _run(_run_id(out))
    _check_recorded(pretrain_run, files)
    assert pretrain_run.data.tags["data_path"] == str(tmp_path / "qg")
    assert int(pretrain_run.data.params["split_pretrain"]) == sum(round(0.5 * n) for n in (48, 40, 56))
    encoder = f"runs:/{pretrain_run.info.run_id}/encoder"
    pattern = str(tmp_path / "qg" / "QCDToGGQQ_IMGjet_RH1all_jet0_run*.test.snappy.parquet")
    code, out, err = _invoke(["finetune", "--encoder-uri", encoder, "--data", pattern, *TINY])
    assert code == 0, err
    finetune_run = _run(_run_id(out))
    _check_recorded(finetune_run, files)
    assert finetune_run.data.tags["pretrain_run_id"] == pretrain_run.info.run_id
    # inspect and encode take the same dataset; encode's rows follow the dataset's jet order
    code, out, err = _invoke(["inspect", pattern])
    assert code == 0 and "3 parquet files" in out and "144" in out, err
    code, out, err = _invoke(["encode", encoder, str(tmp_path / "qg"), "--out", str(tmp_path / "z.h5"),
                              "--no-progress"])
    assert code == 0, err
    with h5py.File(tmp_path / "z.h5") as f:
        assert f["latents"].shape[0] == 144 and f.attrs["data_sha256"] == open_dataset(files).digest
        assert [r["n_jets"] for r in json.loads(f.attrs["files"])] == [i.n_jets for i in open_dataset(files).file_infos]


@pytest.mark.slow
def test_egamma_class_per_file_pair_as_folder_and_glob(tmp_path):
    photon, electron, _, _ = write_egamma_pair(tmp_path / "eg", n=60)
    code, out, err = _invoke(["pretrain", "--data", str(tmp_path / "eg"), "--patch-size", "8", *PRETRAIN])
    assert code == 0, err
    assert "class balance per split (one class per file)" in err and "electron" in err
    run = _run(_run_id(out))
    _check_recorded(run, [photon, electron])
    assert run.data.params["class_balance_pretrain"] == "32 electron / 30 photon"  # exact per file: 64/2, 60/2
    # finetune on a glob of the same files, then a probe with no --data: the encoder's dataset, found by digest
    code, out, err = _invoke(["finetune", "--encoder-uri", f"runs:/{run.info.run_id}/encoder",
                              "--data", str(tmp_path / "eg" / "Single*_IMGCROPS_n249k_RHv1.hdf5"), *TINY])
    assert code == 0, err
    _check_recorded(_run(_run_id(out)), [photon, electron])
    code, out, err = _invoke(["probe", "--encoder-uri", f"runs:/{run.info.run_id}/encoder", *TINY])
    assert code == 0, err
    assert _run(_run_id(out)).data.tags["data_sha256"] == run.data.tags["data_sha256"]


def _split_by_jet(config: PretrainConfig) -> dict[tuple[str, int], str]:
    data = prepare_data(config, progress=False)
    ds = data.dataset
    out = {}
    for name, idx in data.splits.items():
        for i in idx:
            f = int(np.searchsorted(ds.starts, i, side="right") - 1)
            out[(ds.file_digests[f], int(i - ds.starts[f]))] = name
    return out


def test_adding_a_file_moves_no_old_jet_and_sizes_are_exact(tmp_path):
    files = _cms_folder(tmp_path / "grow", sizes=(30, 41))
    before = _split_by_jet(PretrainConfig(data=str(tmp_path / "grow"), split_seed=4))
    _cms_folder(tmp_path / "more", sizes=(1, 1, 77))  # run2 with 77 jets, copied in as the new file
    new_file = tmp_path / "grow" / CMS_NAME.format(2, 77)
    (tmp_path / "more" / CMS_NAME.format(2, 77)).rename(new_file)
    after = _split_by_jet(PretrainConfig(data=str(tmp_path / "grow"), split_seed=4))
    assert all(after[jet] == split for jet, split in before.items()), "an old jet changed split"
    assert len(after) == len(before) + 77
    for path in [*files, new_file]:  # exact sizes per file, as make_splits rounds them
        n, sha = open_dataset(path).info.n_jets, file_digest(path)
        counts = {s: sum(1 for (d, _), v in after.items() if d == sha and v == s) for s in ("pretrain", "test")}
        assert counts == {"pretrain": round(0.5 * n), "test": n - round(0.9 * n)}


def test_a_permutation_encoder_keeps_its_split_and_refuses_a_dataset(tmp_path, monkeypatch):
    """Encoders logged before split_scheme split one file with make_splits: their arms keep it."""
    single = _cms_folder(tmp_path / "one", sizes=(50,))[0]
    monkeypatch.setattr(train_data, "_encoder_metadata", lambda uri: {"data_sha256": "x", "pretrain_run_id": ""})
    config = PretrainConfig(data=str(single), split_seed=2)
    data = prepare_data(config, progress=False)
    assert data.split_scheme == "per-file-hash"
    from mae_tracker.train.config import DownstreamConfig

    old = prepare_data(DownstreamConfig(arm="finetune", data=str(single), split_seed=2, encoder_uri="runs:/x/encoder"),
                       progress=False)
    assert old.split_scheme == "permutation"
    for name, idx in make_splits(50, seed=2).items():
        np.testing.assert_array_equal(old.splits[name], idx)
    _cms_folder(tmp_path / "two", sizes=(20, 22))
    with pytest.raises(ValueError, match="'permutation' scheme") as err:
        prepare_data(DownstreamConfig(arm="finetune", data=str(tmp_path / "two"), encoder_uri="runs:/x/encoder"),
                     progress=False)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("problem", ["corrupt", "mismatched"])
def test_a_bad_file_is_one_line_naming_it_and_no_run_is_left(tmp_path, problem):
    folder = tmp_path / problem
    _cms_folder(folder, sizes=(20, 24))
    bad = folder / "bad_run9.parquet"
    if problem == "corrupt":
        bad.write_bytes(b"PAR1" + b"\x00garbage" * 50 + b"PAR1")
    else:
        write_cms_parquet(bad, jet_images(10, 3, 16, 16), row_group_size=2)
    experiment = f"bad-{problem}"
    code, out, err = _invoke(["pretrain", "--data", str(folder), "--experiment", experiment, *PRETRAIN])
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "bad_run9.parquet" in lines[0], err
    assert not mlflow.search_runs(experiment_names=[experiment], output_format="list")


def test_sparse_copy_of_a_glob_and_pruning_it_when_a_file_goes(tmp_path):
    files = _cms_folder(tmp_path / "sp", sizes=(12, 10))
    code, out, err = _invoke(["sparse-copy", str(tmp_path / "sp" / "*.parquet"), "--no-progress"])
    assert code == 0 and "22 jets" in out and "the 2 files" in out, err
    digest = open_dataset(files).digest
    code, out, _ = _invoke(["prune-sparse-copies", "--dry-run"])
    assert digest[:12] not in out
    files[1].unlink()
    code, out, _ = _invoke(["prune-sparse-copies"])
    assert code == 0 and f"deleted {digest[:12]}" in out and f"its file {files[1]} is gone" in out
    assert not train_data.sparse_copy_dir(digest).exists()


def test_a_sweep_and_a_pipeline_bind_to_the_dataset_digest(tmp_path):
    """The sweep's YAML data may be a folder or a list (joined with commas); its binding is the digest."""
    from mae_tracker.pipeline.spec import load_pipeline_spec
    from mae_tracker.sweep.runner import data_binding
    from mae_tracker.sweep.spec import load_spec

    files = _cms_folder(tmp_path / "sw", sizes=(20, 22))
    digest = open_dataset(files).digest
    for data in (str(tmp_path / "sw"), [str(f) for f in files]):
        spec_path = tmp_path / "sweep.yaml"
        spec_path.write_text(json.dumps({"name": "ds", "n_trials": 1, "parameters": {"mask_ratio": [0.5, 0.75]},
                                         "fixed": {"data": data, "epochs": 1, "patch_size": 4}}))
        spec = load_spec(spec_path)
        binding = data_binding(spec)
        assert binding.digest == digest
    pipeline_path = tmp_path / "pipeline.yaml"
    pipeline_path.write_text(json.dumps({"name": "st", "sweep": "sweep.yaml", "data": {"file": ["sw/*.parquet"]}}))
    pipeline = load_pipeline_spec(pipeline_path)
    assert pipeline.data["file"] == str(tmp_path / "sw" / "*.parquet")
