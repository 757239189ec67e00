"""The sparse copy of a jet file: exact reads, resumable builds, one builder at a time, and runs
that read it give the same numbers as runs that read the file."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import threading
import time

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from jet_h5 import sparse_images, write_jets

from mae_tracker.cli import main
from mae_tracker.data import sparse
from mae_tracker.data.errors import DataError
from mae_tracker.data.jetfile import JetImageReader, file_digest, iterate_batches
from mae_tracker.data.loader import prefetch
from mae_tracker.data.preprocess import Preprocessor
from mae_tracker.data.sparse import SparseJetImages, sparse_copy
from mae_tracker.train.config import PretrainConfig
from mae_tracker.train.data import (build_sparse_copy, prepare_data, prune_sparse_copies, sparse_copies_root,
                                    sparse_copy_dir)
from mae_tracker.train.pretrain import pretrain


def test_reads_equal_the_file_for_any_indices(jets_file, tmp_path):
    reader = JetImageReader(jets_file)
    copy = sparse_copy(reader, tmp_path / "copy")
    assert isinstance(copy, SparseJetImages) and len(copy) == len(reader) == 1000
    dense = reader.read(np.arange(1000))[0]
    assert copy.meta["nonzero"] == np.count_nonzero(dense)
    assert 0.005 < copy.occupancy < 0.1, "jet images are sparse"
    idx = np.random.default_rng(0).integers(0, 1000, 300)  # unsorted, with repeats
    images, labels = copy.read(idx)
    expected_images, expected_labels = reader.read(idx)
    assert images.dtype == np.float32 and images.shape == (300, 3, 32, 32)
    assert np.array_equal(images, expected_images) and np.array_equal(labels, expected_labels)
    assert copy.read([])[0].shape == (0, 3, 32, 32)
    assert np.array_equal(copy.read_extra("pt", idx), reader.read_extra("pt", idx))
    with pytest.raises(IndexError):
        copy.read([1000])
    # a second call opens the finished copy; pickling (torchrun's broadcast) reopens the maps
    again = pickle_round_trip(sparse_copy(reader, tmp_path / "copy"))
    assert np.array_equal(again.read(idx)[0], expected_images)
    size = sum(f.stat().st_size for f in (tmp_path / "copy").iterdir())
    assert size < jets_file.stat().st_size, "smaller than the lzf file"


def pickle_round_trip(value):
    import pickle

    return pickle.loads(pickle.dumps(value))


def test_an_interrupted_build_resumes_where_it_stopped(tmp_path, monkeypatch):
    path, images, labels = write_jets(tmp_path / "jets.h5", sparse_images(50, h=10, w=10))
    monkeypatch.setattr(sparse, "BLOCK_BYTES", 8 * 3 * 10 * 10 * 4)  # blocks of 8 jets

    class Interrupted(JetImageReader):
        reads: list[int] = []

        def read(self, indices):
            if len(self.reads) == 3:
                raise KeyboardInterrupt
            self.reads.append(int(indices[0]))
            return super().read(indices)

    with pytest.raises(KeyboardInterrupt):
        sparse_copy(Interrupted(path), tmp_path / "copy")
    assert not (tmp_path / "copy").exists(), "a half-built copy never has the final name"
    partial = tmp_path / "copy.partial"
    assert json.loads((partial / "progress.json").read_text())["jets"] == 24
    with open(partial / "values.bin", "ab") as handle:  # bytes written past the last record
        handle.write(b"\x01" * 100)

    resumed = JetImageReader(path)
    starts = []
    original = resumed.read
    monkeypatch.setattr(resumed, "read", lambda idx: starts.append(int(idx[0])) or original(idx))
    copy = sparse_copy(resumed, tmp_path / "copy")
    assert starts == [24, 32, 40, 48], "only the blocks not yet recorded are read again"
    assert np.array_equal(copy.read(np.arange(50))[0], images)
    assert np.array_equal(copy.labels(), labels)
    assert not partial.exists()


def test_large_images_use_wide_positions_and_a_foreign_copy_is_refused(tmp_path):
    path, images, _ = write_jets(tmp_path / "big.h5", sparse_images(4, h=160, w=160, occupancy=0.01))
    copy = sparse_copy(JetImageReader(path), tmp_path / "big")
    assert copy.meta["pixel_dtype"] == "int32", "3 x 160 x 160 positions do not fit in uint16"
    assert np.array_equal(copy.read([3, 0])[0], images[[3, 0]])

    other, _, _ = write_jets(tmp_path / "other.h5", n=6)
    with pytest.raises(DataError, match="sparse copy does not match .*other.h5.*delete it to rebuild"):
        SparseJetImages(tmp_path / "big", JetImageReader(other))


def _build_in_child(path, directory, queue) -> None:
    copy = sparse_copy(JetImageReader(path), directory)
    queue.put(copy.meta["nonzero"])


def test_concurrent_builders_take_turns(tmp_path):
    path, images, _ = write_jets(tmp_path / "jets.h5", sparse_images(300, h=20, w=20))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_build_in_child, args=(path, tmp_path / "copy", queue)) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert [queue.get() for _ in children] == [np.count_nonzero(images)] * 3
    assert np.array_equal(SparseJetImages(tmp_path / "copy", JetImageReader(path)).read(np.arange(300))[0], images)


def test_a_bad_pixel_fails_the_build_and_leaves_no_copy(tmp_path):
    images = sparse_images(20)
    images[13, 1, 2, 2] = np.inf
    path, _, _ = write_jets(tmp_path / "bad.h5", images)
    with pytest.raises(DataError, match="non-finite pixel values .* jet 13"):
        sparse_copy(JetImageReader(path), tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    # a run asking for the copy fails the same way, before any run exists
    with pytest.raises(DataError, match="non-finite pixel values .* jet 13"):
        prepare_data(PretrainConfig(data=str(path), sparse_copy=True), progress=False)


def test_preprocessed_batches_from_the_copy_equal_the_files_on_every_loader(jets_file):
    data = prepare_data(PretrainConfig(data=str(jets_file), sparse_copy=True), progress=False)
    assert isinstance(data.reader, SparseJetImages) and data.reader.directory == sparse_copy_dir(data.digest)
    reader = JetImageReader(jets_file)
    train = data.splits["train"]
    pre = Preprocessor.fit(reader, train, pixel_transform="log1p")
    assert Preprocessor.fit(data.reader, train, pixel_transform="log1p") == pre

    def batches(source):
        return iterate_batches(source, train, 64, shuffle=True, seed=5, epoch=2, preprocessor=pre)

    expected = [x for x, _ in batches(reader)]
    for workers, processes in ((0, False), (2, False), (2, True)):
        got = [x for x, _ in prefetch(batches(data.reader), workers=workers, processes=processes)]
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))


def test_a_pretrain_run_on_the_copy_gives_the_same_numbers(jets_file):
    settings = dict(data=str(jets_file), epochs=1, batch_size=64, eval_jets=64, image_every=5, image_jets=2,
                    probe_train_jets=0, probe_val_jets=0, seed=4, experiment="test-sparse")
    runs = [pretrain(PretrainConfig(**settings, sparse_copy=flag), progress=False)["run_id"] for flag in (False, True)]
    client = mlflow.MlflowClient()
    plain, sparse_run = (client.get_run(run_id).data for run_id in runs)
    assert sparse_run.params["sparse_copy"] == "True"
    for key in ("train_loss", "test_loss"):
        assert sparse_run.metrics[key] == plain.metrics[key]


def test_sparse_copy_command_builds_once_and_reports_bad_files(jets_file, tmp_path):
    result = CliRunner().invoke(main, ["sparse-copy", str(jets_file), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "1,000 jets" in result.output and "non-zero" in result.output and "MiB" in result.output
    missing = CliRunner().invoke(main, ["sparse-copy", str(tmp_path / "missing.h5"), "--no-progress"])
    assert missing.exit_code == 2 and "missing.h5" in missing.output


def test_prune_deletes_copies_of_gone_or_changed_files_and_keeps_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_TRACKER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sparse, "BLOCK_BYTES", 8 * 3 * 16 * 16 * 4)  # blocks of 8 jets
    files = {name: write_jets(tmp_path / f"{name}.h5", sparse_images(30, seed=i))[0]
             for i, name in enumerate(("kept", "changed", "gone", "interrupted"))}
    digests = {name: file_digest(path) for name, path in files.items()}
    kept = build_sparse_copy(files["kept"], progress=False)
    for name in ("changed", "gone"):
        build_sparse_copy(files[name], progress=False)

    class Interrupted(JetImageReader):
        def read(self, indices):
            if indices[0] > 0:
                raise KeyboardInterrupt
            return super().read(indices)

    with pytest.raises(KeyboardInterrupt):
        sparse_copy(Interrupted(files["interrupted"]), sparse_copy_dir(digests["interrupted"]))
    write_jets(files["changed"], sparse_images(30, seed=9))
    files["gone"].unlink()
    files["interrupted"].unlink()
    (sparse_copies_root() / ("0" * 64 + ".lock")).touch()  # left by a build that never started
    (sparse_copies_root() / "notes.txt").write_text("not a copy")  # never touched
    before = sorted(p.name for p in sparse_copies_root().iterdir())

    result = CliRunner().invoke(main, ["prune-sparse-copies", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in sparse_copies_root().iterdir()) == before, "a dry run deletes nothing"
    assert f"would delete {digests['gone'][:12]}" in result.output and f"{files['gone']} is gone" in result.output
    assert f"{files['changed']} has changed" in result.output
    assert "4 of 5 sparse copies to delete" in result.output

    result = CliRunner().invoke(main, ["prune-sparse-copies"])
    assert result.exit_code == 0, result.output
    assert "4 of 5 sparse copies deleted" in result.output
    left = sorted(p.name for p in sparse_copies_root().iterdir())
    assert left == sorted([digests["kept"], digests["kept"] + ".lock", "notes.txt"]), left
    assert np.array_equal(kept.read(np.arange(30))[0], JetImageReader(files["kept"]).read(np.arange(30))[0])
    # a changed file gets a fresh copy of its new content
    rebuilt = build_sparse_copy(files["changed"], progress=False)
    assert np.array_equal(rebuilt.read([3])[0], sparse_images(30, seed=9)[[3]])


def test_prune_leaves_a_copy_being_built_and_builders_lock_the_file_at_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_TRACKER_CACHE", str(tmp_path / "cache"))
    path, _, _ = write_jets(tmp_path / "jets.h5", sparse_images(10))
    copy = build_sparse_copy(path, progress=False)
    lock_path = copy.directory.with_name(copy.directory.name + ".lock")
    path.unlink()
    with open(lock_path, "a") as builder:  # another process building (or opening) this copy
        fcntl.flock(builder, fcntl.LOCK_EX)
        (entry,) = prune_sparse_copies()
        assert entry.stale and not entry.removed and copy.directory.exists()
    (entry,) = prune_sparse_copies()
    assert entry.removed and not copy.directory.exists() and not lock_path.exists()

    # A builder that waited on a lock file that was then deleted takes the file at the path.
    lock_path.touch()
    waiter_saw = []
    with open(lock_path, "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)

        def wait_then_look() -> None:
            with sparse._exclusive(lock_path):
                waiter_saw.append(lock_path.exists())

        waiter = threading.Thread(target=wait_then_look)
        waiter.start()
        time.sleep(0.3)  # the waiter blocks on the old lock file
        lock_path.unlink()
        fcntl.flock(holder, fcntl.LOCK_UN)
    waiter.join(10)
    assert waiter_saw == [True]
