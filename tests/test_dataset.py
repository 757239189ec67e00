"""Datasets of many files: resolution (file, folder, glob, list), order-independent digests,
per-jet splits that stay put when files are added, class-per-file pairs, mismatched files, and
the readers' interface (loader, preprocessing, sparse copy) over several files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from jet_h5 import write_jets
from jet_parquet import jet_images, write_cms_parquet, write_egamma_pair

from mae_tracker.data import sparse
from mae_tracker.data.dataset import format_class_balance, open_dataset, split_of_jets
from mae_tracker.data.errors import DataError
from mae_tracker.data.jetfile import JetImageReader, epoch_order, file_digest, iterate_batches
from mae_tracker.data.loader import prefetch
from mae_tracker.data.preprocess import Preprocessor
from mae_tracker.data.sparse import recorded_files, sparse_copy

FRACTIONS = {"pretrain": 0.5, "train": 0.3, "val": 0.1, "test": 0.1}


@pytest.fixture
def three_files(tmp_path):
    """Three CMS-layout Parquet files (row groups of 1, 4 and 25 jets) and their arrays."""
    folder = tmp_path / "qg"
    folder.mkdir()
    arrays = {}
    for run, (n, rg) in enumerate(((20, 1), (24, 4), (25, 25))):
        images, labels = jet_images(n, seed=run), (np.arange(n) + run) % 2
        path = write_cms_parquet(folder / f"QCDToGGQQ_IMGjet_RH1all_jet0_run{run}_n{n}.test.snappy.parquet",
                                 images, labels, row_group_size=rg)
        arrays[path] = (images, labels)
    return folder, arrays


def test_reads_equal_the_files_in_digest_order(three_files):
    folder, arrays = three_files
    ds = open_dataset(folder)
    assert len(ds) == 69 and ds.info.format == "parquet" and ds.image_shape == (3, 12, 12)
    assert [r["sha256"] for r in ds.file_records()] == sorted(file_digest(p) for p in arrays)
    images = np.concatenate([arrays[p][0] for p in ds.info.files])
    labels = np.concatenate([arrays[p][1] for p in ds.info.files])
    order = np.random.default_rng(0).integers(0, 69, 50)  # any order, repeats, all files
    x, y = ds.read(order)
    np.testing.assert_array_equal(x, images[order])
    np.testing.assert_array_equal(y, labels[order])
    np.testing.assert_array_equal(ds.labels(), labels)
    assert ds.read_extra("pt", order).shape == (50,) and ds.info.extra_keys == ("pt", "m0")
    np.testing.assert_array_equal(ds.clone().read(order)[0], images[order])
    import pickle

    np.testing.assert_array_equal(pickle.loads(pickle.dumps(ds)).read(order)[0], images[order])


def test_folder_glob_list_and_comma_name_the_same_dataset(three_files):
    folder, arrays = three_files
    paths = sorted(arrays)
    (folder / ".qg_run9.parquet.1234.tmp").write_bytes(b"half-written")  # an atomic writer's temporary
    (folder / "README.txt").write_text("not data")
    named = [folder, str(folder / "*.parquet"), paths[::-1], [paths[2], paths[0], paths[1]],
             ",".join(str(p) for p in paths)]
    digests = {open_dataset(spec).digest for spec in named}
    assert len(digests) == 1, "the digest depends on the files' content, not on how they are named"
    one = open_dataset(paths[1])
    assert one.digest == file_digest(paths[1]) and one.info.path == paths[1]  # one file: its own digest
    assert open_dataset(folder).info.path == folder
    subset = open_dataset(paths[:2])
    assert subset.digest not in digests and len(subset) == sum(len(arrays[p][0]) for p in paths[:2])

    for spec, message in ((folder / "nope.parquet", "file not found"), (str(folder / "*.h5"), "no files match"),
                          ([paths[0], paths[0]], "listed twice"), ([], "no files given")):
        with pytest.raises(DataError, match=message) as err:
            open_dataset(spec)
        assert "\n" not in str(err.value)
    copy = folder.parent / "copy.parquet"
    copy.write_bytes(paths[0].read_bytes())
    with pytest.raises(DataError, match="same content as"):
        open_dataset([paths[0], copy])
    empty = folder.parent / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no HDF5 or Parquet files"):
        open_dataset(empty)


def test_split_of_a_jet_depends_on_its_file_and_row_only(three_files, tmp_path):
    folder, arrays = three_files
    before = open_dataset(folder)
    write_cms_parquet(folder / "QCDToGGQQ_IMGjet_RH1all_jet0_run3_n30.test.snappy.parquet", jet_images(30, seed=9))
    after = open_dataset(folder)
    assert len(after) == len(before) + 30 and after.digest != before.digest

    def by_jet(ds):  # (file digest, row) -> split
        where = {}
        for name, idx in ds.splits(FRACTIONS, seed=3).items():
            files = np.searchsorted(ds.starts, idx, side="right") - 1
            for f, i in zip(files.tolist(), idx.tolist()):
                where[(ds.file_digests[f], i - int(ds.starts[f]))] = name
        return where

    old, new = by_jet(before), by_jet(after)
    assert len(old) == len(before) and all(new[jet] == split for jet, split in old.items())
    assert {split for split in new.values()} == set(FRACTIONS)  # the new file's jets are spread too
    assert by_jet(open_dataset(folder)) == new, "reproducible"


def test_split_fractions_seed_and_leftover():
    which = split_of_jets("ab" * 32, 40_000, FRACTIONS, seed=0)
    counts = np.bincount(which, minlength=4) / 40_000
    np.testing.assert_allclose(counts, list(FRACTIONS.values()), atol=0.01)
    assert not np.array_equal(which, split_of_jets("ab" * 32, 40_000, FRACTIONS, seed=1))
    assert not np.array_equal(which, split_of_jets("cd" * 32, 40_000, FRACTIONS, seed=0))
    partial = split_of_jets("ab" * 32, 10_000, {"pretrain": 0.2, "test": 0.1})
    assert abs(np.mean(partial == -1) - 0.7) < 0.03, "fractions below 1 leave the rest unused"
    with pytest.raises(ValueError, match="sum to"):
        split_of_jets("ab" * 32, 10, {"a": 0.7, "b": 0.7})


def test_class_per_file_pair_balance_per_split(tmp_path):
    photon_file, electron_file, photons, electrons = write_egamma_pair(tmp_path / "eg", n=60)
    ds = open_dataset(tmp_path / "eg")
    assert ds.info.task == "electron-photon" and ds.info.class_names == ("electron", "photon")
    assert ds.image_shape == (2, 32, 32) and ds.info.format == "hdf5" and ds.info.channel_names == ("energy", "time")
    assert ds.class_per_file and len(ds) == 124
    classes = dict(zip(ds.info.files, ds.file_classes()))
    assert classes == {photon_file.resolve(): 0, electron_file.resolve(): 1}
    splits = ds.splits(FRACTIONS)
    balance = ds.class_balance(splits)
    assert set(balance) == set(FRACTIONS)
    assert sum(b["electron"] for b in balance.values()) == 64 and sum(b["photon"] for b in balance.values()) == 60
    for name, idx in splits.items():
        assert balance[name]["electron"] == int(ds.labels()[idx].sum())
    text = format_class_balance(balance)
    assert text.count("\n") == 3 and "electron /" in text and "% electron" in text
    x, y = ds.read([0, 123])
    first, last = (photons, 0) if ds.info.files[0] == photon_file.resolve() else (electrons, 1)
    np.testing.assert_array_equal(x[0], first[0])
    assert y[0] == last
    mixed = write_jets(tmp_path / "qg.h5")[0]
    assert not open_dataset([mixed]).class_per_file
    assert ds.check_values() == ds.file_digests and ds.check_values(skip=set(ds.file_digests)) == []


def test_files_that_do_not_match_are_an_error_naming_the_file(tmp_path):
    a = write_cms_parquet(tmp_path / "a.parquet", jet_images(4, 3, 12, 12))
    b = write_cms_parquet(tmp_path / "b.parquet", jet_images(4, 8, 12, 12), key="X_jet")
    c = write_cms_parquet(tmp_path / "c.parquet", jet_images(4, 3, 16, 16))
    h5 = write_jets(tmp_path / "d.h5", jet_images(4, 3, 12, 12), attrs={"channel_names": ["ECAL", "HCAL", "Tracks"]})[0]
    top3 = write_jets(tmp_path / "e.h5", jet_images(4, 3, 12, 12), attrs={"task": "top-qcd"})[0]
    for other, message in ((b, "same shape and channels"), (c, "same shape"), (h5, "same channels in the same order"),
                           (top3, "one task per dataset")):
        with pytest.raises(DataError, match=message) as err:
            open_dataset([a, other])
        assert "\n" not in str(err.value) and {str(err.value.path)} & {str(a.resolve()), str(other.resolve())}
    mixed = open_dataset([a, write_jets(tmp_path / "f.h5", jet_images(4, 3, 12, 12))[0]])
    assert mixed.info.format == "mixed" and len(mixed) == 8
    with pytest.raises(DataError, match="'iphi' is missing from"):
        mixed.read_extra("iphi", [0])


def test_batches_loader_preprocessing_and_shuffle_over_files(three_files):
    folder, arrays = three_files
    ds = open_dataset(folder)
    images = np.concatenate([arrays[p][0] for p in ds.info.files])
    train = ds.splits({"train": 0.8}, seed=0)["train"]
    batches = list(prefetch(iterate_batches(ds, train, 7, shuffle=True, seed=1, epoch=2), workers=2))
    got = np.concatenate([x.numpy() for x, _ in batches])
    order = ds.shuffled_order(train, seed=1, epoch=2)
    assert sorted(order.tolist()) == train.tolist()
    np.testing.assert_array_equal(got, images[order])  # the same batches through the worker threads
    forked = prefetch(iterate_batches(ds, train, 7, shuffle=True, seed=1, epoch=2), workers=2, processes=True)
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in forked]), got)  # and processes
    assert not np.array_equal(order, ds.shuffled_order(train, seed=1, epoch=3))
    fitted = Preprocessor.fit(ds, train)
    direct = images[train]
    np.testing.assert_allclose(fitted.mean, [direct[:, c][direct[:, c] >= 1e-3].sum() / direct[:, c].size
                                             for c in range(3)], rtol=1e-6)


def test_shuffle_streams_each_row_group_once_in_windows(tmp_path, monkeypatch):
    images = jet_images(300)
    path = write_cms_parquet(tmp_path / "big.parquet", images, row_group_size=100)
    jet_bytes = 4 * 3 * 12 * 12
    ds = open_dataset(path, block_bytes=10 * jet_bytes, cache_bytes=80 * jet_bytes)  # blocks of 10 jets
    order = ds.shuffled_order(np.arange(300), seed=0, epoch=0)
    assert sorted(order.tolist()) == list(range(300)) and not np.array_equal(order, np.arange(300))
    blocks = order // 10
    windows = [blocks[i:i + 40] for i in range(0, 300, 40)]  # windows of 40 jets = 4 blocks (half the cache)
    assert max(len(set(w.tolist())) for w in windows) <= 5, "a window draws on a few blocks only"
    window_of = {int(b): i // 40 for i, b in enumerate(blocks)}  # windows hold whole blocks
    assert all(window_of[b] == i // 40 for i, b in enumerate(blocks.tolist()))
    for group in range(3):  # row groups come one after another, each one's blocks in order
        spans = [window_of[b] for b in range(10 * group, 10 * group + 10)]
        assert spans == sorted(spans) and spans[-1] - spans[0] <= 3

    import pyarrow.parquet as pq

    streams = []
    real = pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "iter_batches",
                        lambda self, *a, **kw: streams.append(kw["columns"]) or real(self, *a, **kw))
    got = np.concatenate([x.numpy() for x, _ in iterate_batches(ds, np.arange(300), 16, shuffle=True)])
    np.testing.assert_array_equal(got, images[order])
    assert streams.count(["X_jets"]) == 3, "each large row group is decoded front to back once per epoch"


def test_one_hdf5_file_shuffles_exactly_as_before(tmp_path):
    path, images, _ = write_jets(tmp_path / "qg.h5", n=50)
    ds, reader = open_dataset(path), JetImageReader(path)
    idx = np.arange(0, 50, 2)
    assert np.array_equal(ds.shuffled_order(idx, seed=4, epoch=1), epoch_order(idx, shuffle=True, seed=4, epoch=1))
    for (a, _), (b, _) in zip(iterate_batches(ds, idx, 8, shuffle=True, seed=4, epoch=1),
                              iterate_batches(reader, idx, 8, shuffle=True, seed=4, epoch=1)):
        assert np.array_equal(a.numpy(), b.numpy())


def test_sparse_copy_of_many_files_is_exact_and_resumes(three_files, tmp_path, monkeypatch):
    folder, _ = three_files
    ds = open_dataset(folder)
    monkeypatch.setattr(sparse, "BLOCK_BYTES", 16 * 4 * 3 * 12 * 12)  # blocks of 16 jets: 5 blocks
    real_write, calls = sparse.write_text_atomically, []

    def interrupted(path, text):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_write(path, text)

    monkeypatch.setattr(sparse, "write_text_atomically", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sparse_copy(ds, tmp_path / "cache" / ds.digest)
    monkeypatch.setattr(sparse, "write_text_atomically", real_write)
    state = json.loads((tmp_path / "cache" / f"{ds.digest}.partial" / "progress.json").read_text())
    assert state["jets"] == 32 and [f["sha256"] for f in state["files"]] == ds.file_digests
    copy = sparse_copy(ds, tmp_path / "cache" / ds.digest)  # resumes at jet 32
    idx = np.random.default_rng(1).permutation(len(ds))
    (a, ya), (b, yb) = copy.read(idx), ds.read(idx)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert [d for _, d in recorded_files(copy.directory)] == ds.file_digests
    assert copy.meta["source"] == str(folder)
    np.testing.assert_array_equal(copy.read_extra("pt", idx[:5]), ds.read_extra("pt", idx[:5]))


MEMORY_SCRIPT = """
import json, resource, sys
import numpy as np
from mae_tracker.data.dataset import open_dataset
from mae_tracker.data.jetfile import iterate_batches

peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
ds = open_dataset(sys.argv[1], cache_bytes=8 * 2**20, block_bytes=2 * 2**20)
for f in range(len(ds.file_infos)):  # warm up: imports, handles, allocator pools
    ds.read(ds.starts[f] + np.arange(4))
before, n = peak(), 0
for x, _ in iterate_batches(ds, np.arange(len(ds)), 32, shuffle=True, seed=0):
    n += len(x)
print(json.dumps({"growth": peak() - before, "jets": n, "decoded": n * 4 * int(np.prod(ds.image_shape))}))
"""


@pytest.mark.slow
def test_a_dataset_several_times_larger_than_its_memory_budget_streams_through(tmp_path):
    """2,100 CMS-shaped jets (375 MB as float32, twice that as Parquet's doubles) in three files
    (one jet per row group, 16, and one row group of 700 jets), read shuffled in a fresh process
    whose peak RSS may grow by at most BUDGET: Parquet is never decoded whole."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mae_tracker.data.layouts import nested_list_array

    budget = 96 * 2**20
    schema = pa.schema([("X_jets", pa.list_(pa.list_(pa.list_(pa.float64())))), ("y", pa.float64())])
    for run, row_group in enumerate((1, 16, 700)):
        with pq.ParquetWriter(tmp_path / f"run{run}.parquet", schema) as writer:
            step = 50 if row_group < 700 else 700  # a row group never spans two writes
            for start in range(0, 700, step):
                images = jet_images(step, 3, 125, 125, seed=100 * run + start, occupancy=0.01)
                table = pa.table({"X_jets": nested_list_array(images), "y": pa.array(np.arange(step) % 2.0)})
                writer.write_table(table, row_group_size=row_group)
                del images, table
    assert pq.ParquetFile(tmp_path / "run2.parquet").num_row_groups == 1
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["jets"] == 2100 and figures["decoded"] >= 3.5 * budget
    assert figures["growth"] <= budget, f"peak RSS grew {figures['growth'] / 2**20:.0f} MiB"


def test_a_copy_of_a_dataset_is_stale_once_one_of_its_files_changes(three_files, tmp_path):
    from mae_tracker.data.splits import stale_files

    folder, arrays = three_files
    ds = open_dataset(folder, digest_cache=tmp_path / "digests")
    copy = sparse_copy(ds, tmp_path / "cache" / ds.digest)
    files = recorded_files(copy.directory)
    assert stale_files(files, ds.digest) == "" and stale_files(files, "0" * 64) != ""
    changed = sorted(arrays)[1]
    write_cms_parquet(changed, jet_images(5, seed=42))
    assert stale_files(files, ds.digest, digest_cache=tmp_path / "digests") == f"its file {changed} has changed"
    changed.unlink()
    assert stale_files(files, ds.digest) == f"its file {changed} is gone"
