"""Reading jet files: schemas, layouts, validation errors, splits and mini-batches."""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle

import numpy as np
import pytest
import torch
from jet_h5 import BAD_FILES, sparse_images, write_jets

from mae_tracker.data.errors import DataError
from mae_tracker.data.jetfile import (
    InMemoryJetImages,
    JetImageReader,
    cache_in_memory,
    epoch_order,
    file_digest,
    iterate_batches,
    make_splits,
    open_jet_file,
)
from mae_tracker.data.preprocess import Preprocessor


# --------------------------------------------------------------------------- schemas and layouts


def test_e2e_schema_info_and_rows_in_requested_order(tmp_path):
    path, images, labels = write_jets(tmp_path / "qg.h5", attrs={"channel_names": ["Tracks", "ECAL", "HCAL"]})
    info = open_jet_file(path)
    assert (info.images_key, info.labels_key, info.n_jets) == ("X_jets", "y", 40)
    assert info.channels_last and info.image_shape == (3, 16, 16)
    assert info.channel_names == ("Tracks", "ECAL", "HCAL")
    assert info.extra_keys == ("m0", "pt")

    reader = JetImageReader(info)
    order = np.array([5, 0, 39, 5, 12, 1])  # unsorted, with a repeat
    x, y = reader.read(order)
    assert x.dtype == np.float32 and x.shape == (6, 3, 16, 16) and x.flags.c_contiguous
    assert y.dtype == np.int64
    np.testing.assert_array_equal(x, images[order])
    np.testing.assert_array_equal(y, labels[order])
    x_seq, _ = reader.read(np.arange(10, 20))  # one contiguous run
    np.testing.assert_array_equal(x_seq, images[10:20])
    empty, empty_y = reader.read(np.array([], dtype=np.int64))
    assert empty.shape == (0, 3, 16, 16) and empty_y.shape == (0,)
    with pytest.raises(IndexError):
        reader.read([40])


def test_read_extra_in_requested_order(tmp_path):
    path, _, _ = write_jets(tmp_path / "qg.h5")
    import h5py

    with h5py.File(path) as h5:
        pt = h5["pt"][...]
    reader = JetImageReader(path)
    np.testing.assert_array_equal(reader.read_extra("pt", [7, 2, 7]), pt[[7, 2, 7]])
    with pytest.raises(DataError, match="no per-jet dataset 'eta'"):
        reader.read_extra("eta", [0])


def test_channels_first_file_reads_the_same_images(tmp_path):
    images = sparse_images(25, c=5, h=20, w=12)
    path, _, labels = write_jets(tmp_path / "cf.h5", images, channels_last=False, extras=())
    info = open_jet_file(path)
    assert not info.channels_last and info.image_shape == (5, 20, 12)
    assert info.channel_names == tuple(f"ch{i}" for i in range(5))
    x, y = JetImageReader(info).read([3, 1])
    np.testing.assert_array_equal(x, images[[3, 1]])
    np.testing.assert_array_equal(y, labels[[3, 1]])


def test_electron_photon_schema_with_float_labels(tmp_path):
    images = sparse_images(12, c=2, h=32, w=32)
    labels = np.array([1.0, 0.0] * 6)
    path, _, _ = write_jets(tmp_path / "ep.h5", images, labels, images_key="X", extras=())
    info = open_jet_file(path)
    assert info.images_key == "X" and info.image_shape == (2, 32, 32) and info.channels_last
    assert info.channel_names == ("energy", "time")
    x, y = JetImageReader(info).read(np.arange(12)[::-1])
    np.testing.assert_array_equal(x, images[::-1])
    assert y.dtype == np.int64 and y.tolist() == [0, 1] * 6


def test_layout_attribute_settles_an_ambiguous_shape(tmp_path):
    images = sparse_images(6, c=4, h=16, w=4)  # stored (N, 4, 16, 4): either axis could be channels
    path, _, _ = write_jets(tmp_path / "attr.h5", images, channels_last=False, extras=(), attrs={"layout": "NCHW"})
    info = open_jet_file(path)
    assert not info.channels_last and info.image_shape == (4, 16, 4)
    np.testing.assert_array_equal(JetImageReader(info).read([2])[0], images[[2]])


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_input_gives_one_line_error_naming_file_and_problem(tmp_path, case):
    build, phrase = BAD_FILES[case]
    path = build(tmp_path)
    with pytest.raises(DataError) as err:
        open_jet_file(path)  # check_values=True: the pixel scan reads every chunk
    message = str(err.value)
    assert path.name in message and phrase in message
    assert "\n" not in message


def test_value_scan_can_be_skipped_but_batches_are_still_checked(tmp_path):
    build, _ = BAD_FILES["nan_pixel"]
    path = build(tmp_path)
    info = open_jet_file(path, check_values=False)  # structure only
    reader = JetImageReader(info)
    reader.read([16, 18])  # clean jets
    with pytest.raises(DataError, match="jet 17"):
        reader.read([18, 17])


def test_file_digest_is_sha256_of_content(tmp_path):
    path, _, _ = write_jets(tmp_path / "d.h5")
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    write_jets(path, sparse_images(40, seed=9))
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="file not found"):
        file_digest(tmp_path / "gone.h5")


# --------------------------------------------------------------------------- pickling / fork


def _read_in_child(reader: JetImageReader) -> np.ndarray:
    return reader.read([4, 2])[0]


def test_reader_pickles_and_works_in_a_forked_worker(tmp_path):
    path, images, _ = write_jets(tmp_path / "p.h5")
    reader = JetImageReader(path)
    reader.read([0])  # the parent now holds an open handle
    clone = pickle.loads(pickle.dumps(reader))
    np.testing.assert_array_equal(clone.read([3])[0], images[[3]])
    with multiprocessing.get_context("fork").Pool(1) as pool:
        np.testing.assert_array_equal(pool.apply(_read_in_child, (reader,)), images[[4, 2]])
    np.testing.assert_array_equal(reader.read([1])[0], images[[1]])  # parent handle unaffected


# --------------------------------------------------------------------------- splits


def test_default_splits_sizes_disjoint_sorted_complete():
    splits = make_splits(1000, seed=3)
    assert list(splits) == ["pretrain", "train", "val", "test"]
    assert [len(v) for v in splits.values()] == [500, 300, 100, 100]
    joined = np.concatenate(list(splits.values()))
    assert len(np.unique(joined)) == 1000  # disjoint and complete
    for part in splits.values():
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)


def test_reference_split_sizes():
    total = 3_800_000
    sizes = {"pretrain": 2_000_000, "train": 1_000_000, "val": 400_000, "test": 400_000}
    splits = make_splits(total, {k: v / total for k, v in sizes.items()}, seed=0)
    assert {k: len(v) for k, v in splits.items()} == sizes


def test_splits_reproducible_and_seed_dependent():
    a, b, c = make_splits(500, seed=7), make_splits(500, seed=7), make_splits(500, seed=8)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["train"], c["train"])


def test_fractions_below_one_leave_the_rest_unused():
    splits = make_splits(100, {"train": 0.25, "test": 0.05}, seed=1)
    assert [len(v) for v in splits.values()] == [25, 5]
    assert not set(splits["train"]) & set(splits["test"])


@pytest.mark.parametrize("fractions", [{"a": -0.1, "b": 0.5}, {"a": 0.7, "b": 0.4}, {"a": float("nan")}])
def test_invalid_fractions_raise(fractions):
    with pytest.raises(ValueError):
        make_splits(100, fractions)


# --------------------------------------------------------------------------- batches


def test_sequential_batches_cover_indices_in_order(tmp_path):
    path, images, labels = write_jets(tmp_path / "b.h5")
    indices = np.arange(3, 38)
    batches = iterate_batches(JetImageReader(path), indices, 8)
    assert len(batches) == 5
    xs, ys = zip(*batches)
    assert [len(x) for x in xs] == [8, 8, 8, 8, 3]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in zip(xs, ys))
    np.testing.assert_array_equal(torch.cat(xs).numpy(), images[indices])
    np.testing.assert_array_equal(torch.cat(ys).numpy(), labels[indices])


def test_shuffled_batches_seeded_by_seed_and_epoch(tmp_path):
    path, images, labels = write_jets(tmp_path / "s.h5")
    reader = JetImageReader(path)
    indices = np.arange(0, 40, 2)
    order0 = epoch_order(indices, shuffle=True, seed=5, epoch=0)
    assert sorted(order0.tolist()) == indices.tolist() and not np.array_equal(order0, indices)
    np.testing.assert_array_equal(order0, epoch_order(indices, shuffle=True, seed=5, epoch=0))
    assert not np.array_equal(order0, epoch_order(indices, shuffle=True, seed=5, epoch=1))
    assert not np.array_equal(order0, epoch_order(indices, shuffle=True, seed=6, epoch=0))
    ys = torch.cat([y for _, y in iterate_batches(reader, indices, 6, shuffle=True, seed=5)])
    np.testing.assert_array_equal(ys.numpy(), labels[order0])
    dropped = list(iterate_batches(reader, indices, 6, shuffle=True, seed=5, drop_last=True))
    assert [len(x) for x, _ in dropped] == [6, 6, 6]


def test_rank_partition_is_disjoint_and_covers_everything():
    indices = np.arange(10)
    parts = [epoch_order(indices, shuffle=True, seed=1, rank=r, world_size=3) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]  # padded to equal length
    assert set(np.concatenate(parts)) == set(range(10))
    assert len(set(parts[0]) & set(parts[1])) <= 1  # only the wrap-around padding repeats
    with pytest.raises(ValueError):
        epoch_order(indices, shuffle=False, rank=3, world_size=3)


def test_batches_apply_the_preprocessor(tmp_path):
    path, images, _ = write_jets(tmp_path / "pp.h5")
    reader = JetImageReader(path)
    pre = Preprocessor.fit(reader, np.arange(20))
    (x, _), = iterate_batches(reader, [30, 10, 2], 3, preprocessor=pre)
    np.testing.assert_allclose(x.numpy(), pre.transform(images[[30, 10, 2]]), atol=1e-6)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_in_memory_cache_matches_disk_and_respects_the_budget(tmp_path):
    path, images, labels = write_jets(tmp_path / "m.h5", chunk_rows=16)
    reader = JetImageReader(path)
    split = np.array([1, 5, 6, 20, 33])
    cached = cache_in_memory(reader, split, max_bytes=10**6)
    assert isinstance(cached, InMemoryJetImages)
    x, y = cached.read([33, 1, 33])
    np.testing.assert_array_equal(x, images[[33, 1, 33]])
    np.testing.assert_array_equal(y, labels[[33, 1, 33]])
    with pytest.warns(UserWarning, match="chunked 16 jets at a time"):
        iterate_batches(reader, split, 2, shuffle=True)
    xs = torch.cat([b for b, _ in iterate_batches(cached, split, 2, shuffle=True)])
    assert xs.shape == (5, 3, 16, 16)
    with pytest.raises(IndexError):
        cached.read([2])
    assert cache_in_memory(reader, split, max_bytes=5 * 3 * 16 * 16 * 4 - 1) is reader
