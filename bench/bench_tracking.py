"""Benchmark (not a test): share of pretraining wall time spent in MLflow, with and without logging.

Runs the real pretrain arm (the default config: 10 epochs, batch 128, grids every 5 epochs,
online probe) on real Pythia jets against a throw-away SQLite store, twice in one process:

1. logging on, with every MLflow call *on the training thread* wrapped in a timer (figures are
   rendered and uploaded by the background logging thread; that thread's time is shown apart);
2. logging off: the same run with MLflow's logging calls replaced by no-ops.

It prints MLflow's share of the training loop (first epoch to last), of the whole run
(including the one-off model logging at the end), and the wall-time difference of the two runs.

    python bench/bench_tracking.py                 # 4000 jets, default pretrain config
    python bench/bench_tracking.py --jets 2000 --epochs 3
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import mlflow.pyfunc

TIMED = [(mlflow, "log_metrics"), (mlflow, "log_params"), (mlflow, "log_dict"), (mlflow, "log_figure"),
         (mlflow, "log_input"), (mlflow, "set_tags"), (mlflow, "set_tag"), (mlflow, "log_artifact"),
         (mlflow, "start_run"), (mlflow, "end_run"), (mlflow, "register_model"), (mlflow.pyfunc, "log_model"),
         (mlflow.MlflowClient, "log_batch"), (mlflow.MlflowClient, "log_figure"), (mlflow, "get_run")]
LOGGING = {"log_metrics", "log_params", "log_dict", "log_figure", "log_input", "set_tags", "set_tag",
           "log_artifact", "register_model", "log_model", "log_batch"}
MAIN = threading.main_thread()
spent: dict[str, float] = collections.defaultdict(float)  # training thread
off_thread: dict[str, float] = collections.defaultdict(float)  # background logging thread
ORIGINALS = {(owner, name): getattr(owner, name) for owner, name in TIMED}


def timed(owner: object, name: str) -> None:
    original = ORIGINALS[(owner, name)]

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            (spent if threading.current_thread() is MAIN else off_thread)[name] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def silenced(owner: object, name: str) -> None:
    setattr(owner, name, lambda *args, **kwargs: None)


def restore() -> None:
    for (owner, name), original in ORIGINALS.items():
        setattr(owner, name, original)


def run_pretrain(config) -> tuple[float, float, dict]:
    """(wall of the whole call, wall of the training loop, result)."""
    from mae_tracker.train import loop

    marks: list[float] = []
    original_epoch = loop.train_one_epoch

    def marking(*args, **kwargs):
        if not marks:
            marks.append(time.perf_counter())
        return original_epoch(*args, **kwargs)

    original_save = loop.save_checkpoint

    def saving(*args, **kwargs):  # the end of each epoch's rank-0 section
        original_save(*args, **kwargs)
        marks[1:] = [time.perf_counter()]

    loop.train_one_epoch, loop.save_checkpoint = marking, saving
    try:
        from mae_tracker.train.pretrain import pretrain

        start = time.perf_counter()
        result = pretrain(config, progress=False)
        wall = time.perf_counter() - start
    finally:
        loop.train_one_epoch, loop.save_checkpoint = original_epoch, original_save
    return wall, marks[1] - marks[0], result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=None, help="default: the pretrain default (10)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ["MAE_TRACKER_CACHE"] = f"{tmp}/cache"
        from mae_tracker.sim.quark_gluon import QuarkGluonConfig, generate_quark_gluon_file
        from mae_tracker.train.config import PretrainConfig

        data = Path(tmp) / "jets.h5"
        generate_quark_gluon_file(QuarkGluonConfig(n_jets=args.jets, seed=11, mpi=False), data, workers=2, progress=False)
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        mlflow.search_experiments()  # create the store's tables outside the timed run
        overrides = {} if args.epochs is None else {"epochs": args.epochs}
        config = PretrainConfig(data=str(data), checkpoint_dir=f"{tmp}/ckpt", **overrides)

        for owner, name in TIMED:
            timed(owner, name)
        wall, loop_wall, result = run_pretrain(config)
        restore()
        for owner, name in TIMED:
            if name in LOGGING:
                silenced(owner, name)
        wall_off, loop_wall_off, _ = run_pretrain(config)
        restore()

    model_logging = spent["log_model"] + spent["register_model"]
    total = sum(spent.values())
    in_loop = spent["log_metrics"] + spent["log_batch"] + spent["log_figure"]  # the per-epoch calls
    print(f"pretrain, default config ({config.epochs} epochs, batch {config.batch_size}, grids every "
          f"{config.image_every} epochs + last, probe on), {args.jets} jets, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; last-epoch throughput {result['throughput_img_s']:.0f} img/s")
    print("MLflow calls on the training thread:")
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<16} {seconds:7.3f} s  {100 * seconds / wall:5.2f} % of the run")
    print("on the background logging thread (overlaps training): "
          + (", ".join(f"{k} {v:.2f} s" for k, v in off_thread.items()) or "nothing"))
    print(f"\nwith logging:    run {wall:6.1f} s, training loop {loop_wall:6.1f} s")
    print(f"without logging: run {wall_off:6.1f} s, training loop {loop_wall_off:6.1f} s")
    print(f"MLflow share of the training loop (per-epoch metrics, step metrics, grid hand-off): "
          f"{in_loop:.2f} s = {100 * in_loop / loop_wall:.2f} %  (target <= 1 %)")
    print(f"MLflow share of the whole run, training thread (incl. setup and model logging "
          f"{model_logging:.2f} s at the end): {total:.2f} s = {100 * total / wall:.2f} %")
    print(f"wall-time difference with vs without logging: run {wall - wall_off:+.1f} s "
          f"({100 * (wall - wall_off) / wall:+.1f} %), training loop {loop_wall - loop_wall_off:+.1f} s "
          f"({100 * (loop_wall - loop_wall_off) / loop_wall:+.1f} %) (noise on a shared machine: several %)")


if __name__ == "__main__":
    main()
