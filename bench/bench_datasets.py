"""Reading real-layout datasets (not a test): jets/s and bytes/jet, side by side.

Writes synthetic jets shaped like the CMS ones (~1 % of values non-zero, exponential energies,
a central core) at 125x125x3 (quark/gluon) and 125x125x8 (boosted top), in:

* the CMS Parquet layout (nested lists of doubles, channels first), as several files, with one
  jet per row group (as the CMS files) and with row groups of 64 jets;
* HDF5 as the generator writes it (channels last, one jet per chunk + lzf);
* the sparse copy (``--sparse-copy``) built from the Parquet dataset, one pass;

and times, for each, one epoch's shuffled mini-batches of 128 through ``iterate_batches`` (the
training loop's reads; the dataset's own shuffled order), and a front-to-back pass (what the
sparse copy build and the statistics fit do). ``to_pylist`` decoding, the obvious way, is timed
on a few jets for comparison. (Memory stays bounded whatever the dataset size:
tests/test_dataset.py measures it.)

    python bench/bench_datasets.py          # ~3-4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mae_tracker.data.dataset import open_dataset
from mae_tracker.data.jetfile import iterate_batches
from mae_tracker.data.layouts import nested_list_array
from mae_tracker.data.parquet import decode_images
from mae_tracker.data.sparse import sparse_copy


def synthetic(n: int, channels: int, side: int, seed: int) -> np.ndarray:
    """(n, C, H, W) float32, ~1 % of values non-zero, a central core."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, channels, side, side), np.float32)
    hits = int(0.01 * side * side)
    for i in range(n):
        rows = np.clip(rng.normal(side / 2, side / 8, (channels, hits)), 0, side - 1).astype(int)
        cols = np.clip(rng.normal(side / 2, side / 8, (channels, hits)), 0, side - 1).astype(int)
        for c in range(channels):
            images[i, c, rows[c], cols[c]] = rng.exponential(2.0, hits)
    return images


def write_all(folder: Path, n: int, channels: int, files: int) -> dict[str, Path]:
    """The same jets as Parquet (row groups of 1 and of 64) and HDF5 lzf datasets of ``files`` files."""
    key = "X_jets" if channels == 3 else "X_jet"
    schema = pa.schema([(key, pa.list_(pa.list_(pa.list_(pa.float64())))), ("y", pa.float64()),
                        ("pt", pa.float64()), ("m0", pa.float64())])
    out = {name: folder / name for name in ("parquet-rg1", "parquet-rg64", "hdf5-lzf")}
    for path in out.values():
        path.mkdir()
    for f, part in enumerate(np.array_split(np.arange(n), files)):
        labels = (part % 2).astype(np.float64)
        name = f"jets_run{f}_n{len(part)}"
        writers = {rg: pq.ParquetWriter(out[f"parquet-rg{rg}"] / f"{name}.test.snappy.parquet", schema)
                   for rg in (1, 64)}
        with h5py.File(out["hdf5-lzf"] / f"{name}.h5", "w") as h5:
            side = 125
            ds = h5.create_dataset("X_jets", shape=(len(part), side, side, channels), dtype="f4",
                                   chunks=(1, side, side, channels), compression="lzf")
            for start in range(0, len(part), 64):
                rows = part[start:start + 64]
                images = synthetic(len(rows), channels, side, seed=int(rows[0]))
                ds[start:start + len(rows)] = images.transpose(0, 2, 3, 1)
                table = pa.table([nested_list_array(images), pa.array(labels[start:start + len(rows)]),
                                  pa.array(np.full(len(rows), 100.0)), pa.array(np.full(len(rows), 10.0))],
                                 schema=schema)
                for rg, writer in writers.items():
                    writer.write_table(table, row_group_size=rg)
            h5.create_dataset("y", data=labels.astype(np.float32))
            h5.attrs["task"] = "quark-gluon" if channels == 3 else "top-qcd"
        for writer in writers.values():
            writer.close()
    return out


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def epoch_rate(source: Any, n: int, batch: int, seconds: float) -> float:
    """Jets/s over one epoch's shuffled batches, up to ``seconds`` (at least 3 batches)."""
    count, start = 0, time.perf_counter()
    for i, (x, _) in enumerate(iterate_batches(source, np.arange(n), batch, shuffle=True, seed=0)):
        count += len(x)
        if i >= 2 and time.perf_counter() - start > seconds:
            break
    return count / (time.perf_counter() - start)


def sequential_rate(source: Any, n: int, seconds: float, block: int = 256) -> float:
    count, start = 0, time.perf_counter()
    for s in range(0, n, block):
        count += len(source.read(np.arange(s, min(n, s + block)))[0])
        if time.perf_counter() - start > seconds:
            break
    return count / (time.perf_counter() - start)


def conversion_rates(path: Path, jets: int = 20) -> tuple[float, float]:
    """Jets/s turning already-read nested lists into numpy: flattened (this project) and
    through ``to_pylist`` (the obvious way, not used). Arrow's own decoding is not included."""
    pf = pq.ParquetFile(next(path.iterdir()))
    key = pf.schema_arrow.names[0]
    jets = min(jets, pf.num_row_groups)
    column = pf.read_row_groups(list(range(jets)), columns=[key]).column(0)
    dims = _dims(column)
    start = time.perf_counter()
    decode_images(column, dims, path=path, key=key)
    flat = jets / (time.perf_counter() - start)
    start = time.perf_counter()
    np.asarray(column.to_pylist(), dtype=np.float32)
    return flat, jets / (time.perf_counter() - start)


def _dims(column: pa.ChunkedArray) -> tuple[int, int, int]:
    first = column.chunk(0)[0].as_py()
    return (len(first), len(first[0]), len(first[0][0]))


def main() -> None:
    from bench_loader import trainer_rate  # the same step bench_loader times

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n3", type=int, default=1500, help="jets at 125x125x3")
    parser.add_argument("--n8", type=int, default=600, help="jets at 125x125x8")
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for channels, n in ((3, args.n3), (8, args.n8)):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            paths = write_all(Path(tmp), n, channels, args.files)
            decoded = 4 * channels * 125 * 125
            print(f"\n== 125x125x{channels}, {n:,} jets in {args.files} files ({decoded / 1024:.0f} KiB/jet decoded "
                  f"float32; written in {time.perf_counter() - t0:.0f} s)", flush=True)
            rows = []
            for name, path in paths.items():
                ds = open_dataset(path)
                # clones: a fresh block cache for each measurement
                rows.append((name, disk_bytes(path) / n, epoch_rate(ds.clone(), n, args.batch, args.seconds),
                             sequential_rate(ds.clone(), n, args.seconds)))
                if name == "parquet-rg1":
                    t0 = time.perf_counter()
                    copy = sparse_copy(ds, Path(tmp) / "sparse" / ds.digest)
                    build = n / (time.perf_counter() - t0)
                    sparse_row = ("sparse copy", disk_bytes(copy.directory) / n,
                                  epoch_rate(copy, n, args.batch, args.seconds), sequential_rate(copy, n, args.seconds))
                    flat, pylist = conversion_rates(path)
                ds.close()
            rows.append(sparse_row)
            print(f"  {'source':14s} {'bytes/jet':>10s} {'shuffled jets/s':>16s} {'in-order jets/s':>16s}")
            for name, per_jet, shuffled, sequential in rows:
                print(f"  {name:14s} {per_jet:>10,.0f} {shuffled:>16,.0f} {sequential:>16,.0f}")
            print(f"  sparse copy built from parquet-rg1 at {build:,.0f} jets/s (one pass)")
            for variant, patch in (("vit-nano", 5), ("vit-nano", 25)):  # the trainer it must feed, same run
                need = trainer_rate(125, variant, patch, args.batch, args.seconds, threads=2, channels=channels)
                print(f"  trainer {variant} patch {patch}: {need:,.0f} img/s; raw reads / trainer: sparse copy "
                      f"{sparse_row[2] / need:,.1f}x, Parquet (1 jet/row group) {rows[0][2] / need:,.1f}x")
            print(f"  nested lists -> numpy after Arrow's decoding: flattened {flat:,.0f} jets/s, "
                  f"to_pylist {pylist:,.0f} jets/s (x{flat / pylist:,.0f})", flush=True)


if __name__ == "__main__":
    main()
