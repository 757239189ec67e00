"""Generator speed per task: jets/s per worker vs the raw Pythia event rate with the same settings,
and the share of the time spent making images. Not a test.

    .venv/bin/python bench/bench_tasks.py --jets 100 [--mpi]

One process, one worker (the per-worker figure; workers scale it, see bench_generate.py).
Pythia's initialisation is timed apart and excluded from the rates.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def raw_rate(settings: list[str], events: int) -> float:
    from mae_tracker.sim.events import make_pythia

    pythia = make_pythia(settings, seed=12345)
    start = time.perf_counter()
    done = 0
    while done < events:
        done += len(pythia.nextBatch(min(100, events - done)))
    return done / (time.perf_counter() - start)


def quark_gluon(jets: int, mpi: bool) -> dict[str, float]:
    from mae_tracker.sim import detector
    from mae_tracker.sim import quark_gluon as pythia_jets
    from mae_tracker.sim.quark_gluon import QuarkGluonConfig, run_shard
    from mae_tracker.sim.shards import ShardJob

    config = QuarkGluonConfig(n_jets=2 * jets, mpi=mpi)
    image_time = [0.0]
    real = detector.particles_to_image

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            image_time[0] += time.perf_counter() - t0

    pythia_jets.particles_to_image = timed
    total = events = 0.0
    try:
        for label in (1, 0):
            start = time.perf_counter()
            shard = run_shard(ShardJob(config, label, 0, jets))
            total += time.perf_counter() - start
            events += shard.n_events
    finally:
        pythia_jets.particles_to_image = real
    raw = np.mean([raw_rate(config.pythia_settings(label), 300) for label in (1, 0)])
    return {"jets_per_s": 2 * jets / total, "events_per_s_in_generator": events / total,
            "raw_pythia_events_per_s": raw, "image_share": image_time[0] / total}


def top_qcd(jets: int, mpi: bool) -> dict[str, float]:
    from mae_tracker.sim.shards import ShardJob
    from mae_tracker.sim.top_qcd import TopQCDConfig, generate_shard

    config = TopQCDConfig(n_jets=2 * jets, mpi=mpi)
    total = events = images = 0.0
    out = {}
    for label, name in ((1, "top"), (0, "QCD")):
        start = time.perf_counter()
        shard = generate_shard(ShardJob(config, label, 0, jets))
        seconds = time.perf_counter() - start
        total += seconds
        events += shard.n_events
        images += shard.seconds_images
        out[f"{name}_jets_per_s"] = jets / seconds
        out[f"{name}_jets_per_event"] = jets / shard.n_events
        out[f"{name}_raw_pythia_events_per_s"] = raw_rate(config.pythia_settings(label), 200)
    out.update(jets_per_s=2 * jets / total, events_per_s_in_generator=events / total, image_share=images / total)
    return out


def electron_photon(jets: int) -> dict[str, float]:
    from mae_tracker.sim.electron_photon import EGammaConfig, generate_shard
    from mae_tracker.sim.shards import ShardJob

    config = EGammaConfig(n_particles=2 * jets)
    start = time.perf_counter()
    for label in (1, 0):
        generate_shard(ShardJob(config, label, 0, jets))
    seconds = time.perf_counter() - start
    # no event generator: all of the time is the shower model and image making
    return {"jets_per_s": 2 * jets / seconds, "image_share": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, default=100, help="jets per class per task")
    parser.add_argument("--mpi", action="store_true", help="multi-parton interactions on (slower)")
    args = parser.parse_args()
    print(f"jets per class: {args.jets}, MPI {'on' if args.mpi else 'off'}, one worker")
    for name, run in (("quark-gluon", lambda: quark_gluon(args.jets, args.mpi)),
                      ("top-qcd", lambda: top_qcd(args.jets, args.mpi)),
                      ("electron-photon", lambda: electron_photon(10 * args.jets))):
        figures = run()
        print(f"{name:16s} " + "  ".join(f"{k} {v:.3g}" for k, v in figures.items()), flush=True)


if __name__ == "__main__":
    main()
