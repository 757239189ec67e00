"""Benchmark (not a test): jet-image generator speed vs raw Pythia, and 1 vs 2 workers.

1. Per class, one shard through the full pipeline (Pythia nextBatch + FastJet clustering +
   parton matching + detector images) in this process, then a fresh Pythia with the same
   settings and the same seed generating the same number of events and nothing else: the
   events are identical, so the time ratio is exactly the pipeline's overhead on top of
   event generation.
2. `generate_file` end to end with 1 and with 2 worker processes (spawn, one Pythia each).

    python bench/bench_generate.py                 # default physics (MPI on), ~2 minutes
    python bench/bench_generate.py --no-mpi --n-jets 1000
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import h5py

from mae_tracker.sim.events import make_pythia
from mae_tracker.sim.quark_gluon import GLUON, MAX_BATCH, QUARK, QuarkGluonConfig, run_shard
from mae_tracker.sim.quark_gluon import generate_quark_gluon_file as generate_file
from mae_tracker.sim.shards import ShardJob, shard_seeds


def raw_pythia_seconds(config: QuarkGluonConfig, label: int, shard: int, n_events: int) -> float:
    """Time to generate ``n_events`` with the shard's settings and seed (init excluded)."""
    pythia = make_pythia(config.pythia_settings(label), shard_seeds(config.seed, label, shard)[0])
    start = time.perf_counter()
    done = 0
    while done < n_events:
        done += len(pythia.nextBatch(min(MAX_BATCH, n_events - done)))
    return time.perf_counter() - start


def overhead(config: QuarkGluonConfig, jets: int) -> None:
    print(f"-- pipeline vs raw Pythia (one shard of {jets} jets per class, same events) --")
    for label, name in ((QUARK, "quark"), (GLUON, "gluon")):
        start = time.perf_counter()
        shard = run_shard(ShardJob(config, label, 0, jets))
        full = time.perf_counter() - start  # includes Pythia init (~0.1-0.3 s)
        raw = raw_pythia_seconds(config, label, 0, shard.n_events)
        print(f"{name}: {jets / full:6.1f} jets/s per worker | {shard.n_events} events, "
              f"{shard.n_events / full:6.1f} ev/s in the pipeline vs {shard.n_events / raw:6.1f} ev/s raw "
              f"Pythia -> overhead x{full / raw:.2f} | {jets / shard.n_events:.3f} jets/event")


def scaling(config: QuarkGluonConfig) -> None:
    print(f"-- generate_file, {config.n_jets} jets, preset {config.preset} --")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            out = Path(tmp) / f"w{workers}.h5"
            start = time.perf_counter()
            generate_file(config, out, workers=workers, progress=False)
            wall = time.perf_counter() - start
            rates[workers] = config.n_jets / wall
            with h5py.File(out) as f:
                events = sum(json.loads(f.attrs["generation"])["n_events"].values())
            print(f"workers={workers}: {wall:6.1f} s, {rates[workers]:6.1f} jets/s total, "
                  f"{rates[workers] / workers:6.1f} jets/s per worker, {events / wall:6.1f} events/s, "
                  f"{os.path.getsize(out) / config.n_jets / 1024:.1f} KiB/jet on disk")
    print(f"speed-up 2 vs 1 workers: x{rates[2] / rates[1]:.2f} (machine has {os.cpu_count()} cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-jets", type=int, default=500, help="jets for the 1 vs 2 workers run")
    parser.add_argument("--shard-jets", type=int, default=250, help="jets per class for the overhead run")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--mpi", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    config = QuarkGluonConfig(n_jets=args.n_jets, seed=1, preset=args.preset, mpi=args.mpi)
    print(f"settings: {json.dumps(config.to_dict())}")
    overhead(config, args.shard_jets)
    scaling(config)


if __name__ == "__main__":
    main()
