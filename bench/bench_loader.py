"""Loader throughput for shuffled mini-batches (not a test): images/s, side by side.

Writes synthetic files shaped like real jet images (channels-last float32, ~1% of pixels
non-zero, chunks of one jet + lzf, as the generator writes them) and times, per image size:

* streaming shuffled batches from disk (what training does by default),
* the same with preprocessing,
* the in-memory cache of the split (cache_in_memory), with and without preprocessing,
* h5py fancy indexing of the sorted batch (the obvious way, not used: shows why rows are
  read one run at a time),
* a file chunked 64 jets at a time (other tools' files): why cache_in_memory exists,
* the sparse copy (data/sparse.py, ``--sparse-copy true``): non-zero pixels only, memory-mapped,
  with its build time and size on disk,
* the background prefetch workers the training loop uses (data/loader.py, 1 and 2 threads, and
  2 processes (``--loader-processes``), with preprocessing; from the file and from the sparse
  copy) against the trainer's consumption, measured in the same run with the real training step
  (MAE, fused AdamW) at the default encoder for that image size: the ratio must be >= 5x
  everywhere.

    python bench/bench_loader.py            # ~1-2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from mae_tracker.data.jetfile import JetImageReader, cache_in_memory, iterate_batches, make_splits
from mae_tracker.data.loader import Prefetcher, process_prefetcher
from mae_tracker.data.preprocess import Preprocessor
from mae_tracker.data.sparse import sparse_copy

# The trainer whose consumption the loader must beat, per image size: (variant, patch).
TRAINERS = {32: [("vit-nano", 4)], 125: [("vit-nano", 5), ("vit-nano", 25)]}


def trainer_rate(side: int, variant: str, patch: int, batch: int, seconds: float, threads: int,
                 channels: int = 3) -> float:
    """Images/s the real training step consumes (our MAE step, fused AdamW, ``threads`` threads)."""
    from mae_tracker.models import build_mae, mae_config
    from mae_tracker.train import loop

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = build_mae(mae_config(variant, img_size=side, in_chans=channels, patch_size=patch))
        opt = loop.make_optimizer(model, 1e-4, 0.05)
        x = torch.rand(batch, channels, side, side)

        def step():
            loss = model(x, 0.75, noise=loop.mask_noise(batch, model.num_patches, x.device))[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        count, start = 0, time.perf_counter()
        while count < 3 * batch or time.perf_counter() - start < seconds:
            step()
            count += batch
        return count / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(saved)


def write_synthetic(path: Path, n: int, side: int, *, chunk_rows: int = 1, seed: int = 0) -> Path:
    """Sparse jet-like images: ~1% occupied pixels, exponential energies, centred core."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as h5:
        images = h5.create_dataset("X_jets", shape=(n, side, side, 3), dtype="f4",
                                   chunks=(chunk_rows, side, side, 3), compression="lzf")
        for start in range(0, n, 500):
            block = np.zeros((min(500, n - start), side, side, 3), np.float32)
            hits = int(0.01 * side * side)
            for i in range(len(block)):
                rows = np.clip(rng.normal(side / 2, side / 8, (hits, 3)), 0, side - 1).astype(int)
                cols = np.clip(rng.normal(side / 2, side / 8, (hits, 3)), 0, side - 1).astype(int)
                for c in range(3):
                    block[i, rows[:, c], cols[:, c], c] = rng.exponential(2.0, hits)
            images[start:start + len(block)] = block
        h5.create_dataset("y", data=(np.arange(n) % 2).astype(np.float32))
    return path


def rate(batches, seconds: float) -> float:
    """Images/s over as many batches as fit in ``seconds`` (at least 3)."""
    count, start = 0, time.perf_counter()
    for i, (x, _) in enumerate(batches):
        count += len(x)
        if i >= 2 and time.perf_counter() - start > seconds:
            break
    elapsed = time.perf_counter() - start
    if hasattr(batches, "close"):
        batches.close()  # stop prefetch workers
    return count / elapsed


def fancy_rate(path: Path, indices: np.ndarray, batch: int, seconds: float) -> float:
    rng = np.random.default_rng(0)
    order = rng.permutation(indices)
    count, start = 0, time.perf_counter()
    with h5py.File(path, "r") as h5:
        images = h5["X_jets"]
        for s in range(0, len(order), batch):
            images[np.sort(order[s:s + batch])]
            count += batch
            if s >= 2 * batch and time.perf_counter() - start > seconds:
                break
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-small", type=int, default=20_000, help="jets in the 32x32x3 file")
    parser.add_argument("--n-large", type=int, default=3_000, help="jets in the 125x125x3 file")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--train-threads", type=int, default=2, help="torch threads of the trainer measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        for side, n in ((32, args.n_small), (125, args.n_large)):
            t0 = time.perf_counter()
            path = write_synthetic(Path(tmp) / f"jets{side}.h5", n, side)
            print(f"\n== {side}x{side}x3, {n:,} jets, chunk 1 + lzf, {path.stat().st_size / n / 1024:.1f} KiB/jet "
                  f"on disk (written in {time.perf_counter() - t0:.1f} s)")
            reader = JetImageReader(path)
            train = make_splits(n, {"train": 0.5}, seed=0)["train"]
            pre = Preprocessor.fit(reader, train)

            def batches(source, preprocessor=None, epoch=0):
                return iterate_batches(source, train, args.batch, shuffle=True, seed=1, epoch=epoch,
                                       preprocessor=preprocessor, drop_last=True)

            t0 = time.perf_counter()
            cached = cache_in_memory(reader, train, max_bytes=4 * 2**30)
            fill = time.perf_counter() - t0
            t0 = time.perf_counter()
            sparse = sparse_copy(reader, Path(tmp) / f"sparse{side}")
            build = time.perf_counter() - t0
            sparse_bytes = sum(f.stat().st_size for f in sparse.directory.iterdir())
            x = torch.from_numpy(reader.read(train[:args.batch])[0])
            results = {
                "disk, shuffled": rate(batches(reader), args.seconds),
                "disk, shuffled + preprocess": rate(batches(reader, pre, 1), args.seconds),
                "memory, shuffled": rate(batches(cached), args.seconds),
                "memory, shuffled + preprocess": rate(batches(cached, pre), args.seconds),
                "h5py fancy indexing (not used)": fancy_rate(path, train, args.batch, args.seconds),
                "preprocess only (torch batch)": rate(((pre.transform(x), None) for _ in iter(int, 1)), args.seconds),
                "prefetch 1 thread, + preprocess": rate(Prefetcher(batches(reader, pre, 2), workers=1), args.seconds),
                "prefetch 2 threads, + preprocess": rate(Prefetcher(batches(reader, pre, 3), workers=2), args.seconds),
                "prefetch 2 processes, + preprocess": rate(process_prefetcher(batches(reader, pre, 4), workers=2),
                                                           args.seconds),
                "sparse copy, shuffled": rate(batches(sparse), args.seconds),
                "sparse copy, shuffled + preprocess": rate(batches(sparse, pre, 5), args.seconds),
                "sparse: prefetch 1 thread, + prep.": rate(Prefetcher(batches(sparse, pre, 6), workers=1),
                                                           args.seconds),
                "sparse: prefetch 2 threads, + prep.": rate(Prefetcher(batches(sparse, pre, 7), workers=2),
                                                            args.seconds),
            }
            base = results["disk, shuffled"]
            for name, value in results.items():
                print(f"  {name:34s} {value:>10,.0f} img/s   x{value / base:5.2f} vs disk")
            print(f"  (filling the in-memory cache of {len(train):,} jets took {fill:.2f} s; building the sparse "
                  f"copy of all {n:,} took {build:.2f} s, {n / build:,.0f} jets/s: {sparse_bytes / n / 1024:.1f} "
                  f"KiB/jet, {sparse.occupancy:.2%} of values non-zero)")
            loaders = {"file": max(v for name, v in results.items() if name.startswith("prefetch")),
                       "sparse copy": max(v for name, v in results.items() if name.startswith("sparse: prefetch"))}
            for variant, patch in TRAINERS[side]:
                need = trainer_rate(side, variant, patch, args.batch, args.seconds, args.train_threads)
                print(f"  trainer {variant} patch {patch} ({(side // patch) ** 2} tokens), batch {args.batch}, "
                      f"{args.train_threads} threads: consumes {need:,.0f} img/s", flush=True)
                for source, loader in loaders.items():
                    verdict = "ok" if loader >= 5 * need else "BELOW the 5x target"
                    print(f"    loader (background, preprocessed) from the {source:11s} / trainer = "
                          f"{loader / need:5.1f}x  [{verdict}]", flush=True)

        path = write_synthetic(Path(tmp) / "chunk64.h5", args.n_small, 32, chunk_rows=64)
        reader = JetImageReader(path)
        train = make_splits(args.n_small, {"train": 0.5}, seed=0)["train"]
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slow = rate(iterate_batches(reader, train, args.batch, shuffle=True), args.seconds)
        fast = rate(iterate_batches(cache_in_memory(reader, train, max_bytes=2**30), train, args.batch,
                                    shuffle=True), args.seconds)
        print(f"\n== 32x32x3 chunked 64 jets at a time: disk shuffled {slow:,.0f} img/s, "
              f"in memory {fast:,.0f} img/s (x{fast / slow:.1f})")


if __name__ == "__main__":
    main()
