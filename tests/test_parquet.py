"""Parquet jet files in the CMS layouts: reading by row group equals the source arrays, any row
group size, channels first or last, the top layout; bad files give one line naming them; the
project writes the same layouts (``generate --format parquet``, ``--split-by-class``)."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from jet_parquet import jet_images, write_cms_parquet

from mae_tracker.cli import main
from mae_tracker.data import layouts
from mae_tracker.data.dataset import open_dataset
from mae_tracker.data.errors import DataError
from mae_tracker.data.jetfile import JetImageReader
from mae_tracker.data.parquet import open_parquet_file
from mae_tracker.data.parquet_reader import BlockCache, ParquetJetReader, check_parquet_values


@pytest.mark.parametrize("row_group_size", [1, 3, 40])
def test_reading_by_row_group_equals_the_source_arrays(tmp_path, row_group_size):
    images = jet_images(40)
    labels = (np.arange(40) * 7) % 2
    pt = np.linspace(70, 200, 40)
    path = write_cms_parquet(tmp_path / "qg.snappy.parquet", images, labels, row_group_size=row_group_size,
                             extras={"pt": pt, "m0": pt / 10})
    info = open_parquet_file(path)
    check_parquet_values(info)
    assert (info.format, info.images_key, info.n_jets, info.image_shape) == ("parquet", "X_jets", 40, (3, 12, 12))
    assert not info.channels_last and info.channel_names == ("Tracks", "ECAL", "HCAL")
    assert info.extra_keys == ("pt", "m0") and info.task == "quark-gluon"
    # blocks of 7 jets: large row groups are streamed block by block, never decoded whole
    reader = ParquetJetReader(info, block_bytes=7 * 4 * 3 * 12 * 12)
    order = np.array([5, 0, 39, 5, 12, 1, 38, 20, 21])  # unsorted, a repeat, several row groups
    x, y = reader.read(order)
    assert x.dtype == np.float32 and x.shape == (9, 3, 12, 12) and y.dtype == np.int64
    np.testing.assert_array_equal(x, images[order])
    np.testing.assert_array_equal(y, labels[order])
    for start in range(0, 40, 6):  # front to back, as the sparse copy and Preprocessor.fit read
        np.testing.assert_array_equal(reader.read(np.arange(start, min(40, start + 6)))[0],
                                      images[start:start + 6])
    np.testing.assert_array_equal(reader.read(order[::-1])[0], images[order[::-1]])  # from the cache
    np.testing.assert_allclose(reader.read_extra("pt", order), pt[order])
    assert reader.read([])[0].shape == (0, 3, 12, 12)
    with pytest.raises(IndexError):
        reader.read([40])
    again = pickle.loads(pickle.dumps(reader))  # loader processes get a reader without handles
    np.testing.assert_array_equal(again.read(order)[0], images[order])
    np.testing.assert_array_equal(reader.clone().read(order)[0], images[order])


def test_channels_last_and_the_top_layout(tmp_path):
    images = jet_images(6, 8, 10, 10)
    last = write_cms_parquet(tmp_path / "last.parquet", images, key="X_jet", channels_last=True,
                             extras={"pt": np.ones(6), "m0": np.ones(6), "iphi": np.arange(6.0),
                                     "ieta": -np.arange(6.0)})
    info = open_parquet_file(last)
    assert info.channels_last and info.image_shape == (8, 10, 10) and info.images_key == "X_jet"
    assert info.task == "top-qcd" and info.class_names == ("top", "QCD")
    assert info.channel_names == ("Tracks", "ECAL", "HCAL", "d0", "dz", "BPix1", "BPix2", "BPix3")
    reader = ParquetJetReader(info)
    np.testing.assert_array_equal(reader.read([4, 1])[0], images[[4, 1]])
    np.testing.assert_array_equal(reader.read_extra("ieta", [2, 5]), [-2.0, -5.0])


def test_block_cache_is_bounded_and_least_recently_used():
    cache = BlockCache(max_bytes=3 * 400)
    for k in range(3):
        cache.put(k, np.zeros(100, np.float32))
    assert cache.get(0) is not None  # 0 is now the most recent
    cache.put(3, np.zeros(100, np.float32))
    assert cache.get(1) is None and cache.get(0) is not None and cache.used == 1200
    cache.put("big", np.zeros(1000, np.float32))  # larger than the cache: not kept
    assert cache.get("big") is None and cache.used <= cache.max_bytes


def _ragged(path):
    column = pa.array([np.zeros((3, 12, 12)).tolist(), np.zeros((3, 12, 13)).tolist()])
    pq.write_table(pa.table({"X_jets": column, "y": [0.0, 1.0]}), path, row_group_size=1)


def _bad_file(tmp_path, case):
    path = tmp_path / f"{case}.parquet"
    good = lambda p, **kw: write_cms_parquet(p, jet_images(4), **kw)  # noqa: E731
    if case == "truncated":
        good(tmp_path / "whole.parquet")
        path.write_bytes((tmp_path / "whole.parquet").read_bytes()[:-300])
    elif case == "garbage":
        path.write_bytes(b"PAR1 this is not a parquet file at all" * 20)
    elif case == "not-parquet":
        path.write_bytes(b"hello")
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "no-images":
        pq.write_table(pa.table({"jets": [1.0], "y": [0.0]}), path)
    elif case == "no-labels":
        pq.write_table(pa.table({"X_jets": pa.array([np.zeros((3, 4, 4)).tolist()])}), path)
    elif case == "flat-images":
        pq.write_table(pa.table({"X_jets": pa.array([[1.0, 2.0]]), "y": [0.0]}), path)
    elif case == "bad-labels":
        good(path, labels=np.array([0, 1, 2, 1]))
    elif case == "ragged":
        _ragged(path)
    elif case == "nan":
        images = jet_images(4)
        images[2, 1, 3, 3] = np.nan
        write_cms_parquet(path, images)
    return path


@pytest.mark.parametrize("case, message", [
    ("truncated", "truncated or corrupt"), ("garbage", "truncated or corrupt"), ("not-parquet", "no PAR1"),
    ("empty", "empty"), ("no-images", "no image column"), ("no-labels", "no label column 'y'"),
    ("flat-images", "nested lists"), ("bad-labels", "labels must be 0 or 1"),
    ("ragged", "X_jets jet 1 has 13 entries on image axis 3"),
    ("nan", "non-finite pixel values (NaN or inf) in X_jets, jet 2"),
])
def test_bad_file_gives_one_line_naming_it(tmp_path, case, message):
    path = _bad_file(tmp_path, case)
    with pytest.raises(DataError) as err:
        check_parquet_values(open_parquet_file(path))  # ragged and NaN show up when read
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text, text
    # the same through a dataset of several files
    write_cms_parquet(tmp_path / "ok.parquet", jet_images(4))
    with pytest.raises(DataError, match=str(path.name)):
        ds = open_dataset([tmp_path / "ok.parquet", path], check_values=True)
        ds.read(np.arange(len(ds)))


def test_write_layout_round_trip_and_atomicity(tmp_path, monkeypatch):
    from jet_h5 import write_jets

    images = jet_images(30, 3, 8, 8)
    src, _, labels = write_jets(tmp_path / "src.h5", images, attrs={"task": "quark-gluon", "layout": "NHWC"})
    reader = JetImageReader(src)
    out = tmp_path / "qg"
    files = layouts.write_layout(reader, out, fmt="parquet", files=3, row_group_size=2)
    assert [f.name for f in files] == [f"qg_run{i}_n10.snappy.parquet" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == sorted(f.name for f in files)
    first = pq.ParquetFile(files[0])
    assert first.schema_arrow.field("X_jets").type == pa.list_(pa.list_(pa.list_(pa.float64())))
    assert first.schema_arrow.field("y").type == pa.float64() and first.num_row_groups == 5
    for i, path in enumerate(files):  # file i holds the i-th share, channels first
        got, got_y = ParquetJetReader(path).read(np.arange(10))
        np.testing.assert_array_equal(got, images[10 * i:10 * i + 10])
        np.testing.assert_array_equal(got_y, labels[10 * i:10 * i + 10])
    with pytest.raises(ValueError, match="already exists"):
        layouts.write_layout(reader, out, fmt="parquet")

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(layouts, "_write_hdf5", broken)
    with pytest.raises(KeyboardInterrupt):
        layouts.write_layout(reader, tmp_path / "never", fmt="hdf5", split_by_class=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qg", "src.h5"]


def test_cli_generate_parquet_files_and_class_pair(tmp_path):
    runner = CliRunner()
    common = ["--task", "electron-photon", "--n-jets", "12", "--seed", "3", "--no-progress"]
    assert runner.invoke(main, ["generate", "--out", str(tmp_path / "eg.h5"), *common]).exit_code == 0
    result = runner.invoke(main, ["generate", "--out", str(tmp_path / "pq"), "--format", "parquet",
                                  "--files", "3", *common])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "pq").iterdir()) == [f"pq_run{i}_n4.snappy.parquet" for i in range(3)]
    result = runner.invoke(main, ["generate", "--out", str(tmp_path / "pair"), "--split-by-class", *common])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "pair").iterdir()) == ["electron_n6.h5", "photon_n6.h5"]

    source = JetImageReader(tmp_path / "eg.h5")
    x, y = source.read(np.arange(12))
    for folder in ("pq", "pair"):  # the same jets, in the real layouts, read through the dataset
        ds = open_dataset(tmp_path / folder)
        got, got_y = ds.read(np.arange(12))
        pt = ds.read_extra("pt", np.arange(12))
        order = np.argsort(source.read_extra("pt", np.arange(12)))
        np.testing.assert_array_equal(got[np.argsort(pt)], x[order])
        np.testing.assert_array_equal(got_y[np.argsort(pt)], y[order])
        assert ds.info.task == "electron-photon" and ds.info.class_names == ("electron", "photon")
    pair = open_dataset(tmp_path / "pair")
    assert pair.class_per_file and sorted(pair.file_classes()) == [0, 1]
    assert pq.ParquetFile(next((tmp_path / "pq").iterdir())).schema_arrow.names[0] == "X"

    existing = runner.invoke(main, ["generate", "--out", str(tmp_path / "pq"), "--format", "parquet", *common])
    assert existing.exit_code == 2 and "already exists" in existing.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eg.h5", "pair", "pq"]  # no temporaries left


def test_top_jets_are_written_as_the_cms_top_layout(tmp_path):
    from jet_h5 import write_jets

    images = jet_images(6, 8, 16, 16)
    src = write_jets(tmp_path / "top.h5", images, attrs={"task": "top-qcd", "class_names": ["top", "QCD"]})[0]
    (path,) = layouts.write_layout(JetImageReader(src), tmp_path / "top", fmt="parquet")
    assert path.name == "top_n6.snappy.parquet"
    assert pq.ParquetFile(path).schema_arrow.names[:2] == ["X_jet", "y"]
    info = open_parquet_file(path)
    assert info.task == "top-qcd" and info.image_shape == (8, 16, 16) and not info.channels_last
    np.testing.assert_array_equal(ParquetJetReader(info).read(np.arange(6))[0], images)
