"""Benchmark (not a test): share of pretraining wall time spent in MLflow logging.

Runs the real pretrain arm on real Pythia jets against a throw-away SQLite store, with every
MLflow call the arm makes wrapped in a timer, and prints the logging share of wall time
(split into per-epoch logging and the one-off model logging at the end).

    python bench/bench_tracking.py                 # 2000 jets, 3 epochs
    python bench/bench_tracking.py --jets 4000 --epochs 5
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import tempfile
import time
from pathlib import Path

import mlflow
import mlflow.pytorch

TIMED = [(mlflow, "log_metrics"), (mlflow, "log_params"), (mlflow, "log_dict"), (mlflow, "log_figure"),
         (mlflow, "log_input"), (mlflow, "set_tags"), (mlflow, "log_artifact"), (mlflow, "start_run"),
         (mlflow, "end_run"), (mlflow, "register_model"), (mlflow.pytorch, "log_model"),
         (mlflow.MlflowClient, "log_batch"), (mlflow, "get_run")]
spent: dict[str, float] = collections.defaultdict(float)


def timed(owner: object, name: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-every", type=int, default=5, help="reconstruction grids every N epochs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        from mae_tracker.data.generate import GeneratorConfig, generate_file
        from mae_tracker.train.config import PretrainConfig
        from mae_tracker.train.pretrain import pretrain

        data = Path(tmp) / "jets.h5"
        generate_file(GeneratorConfig(n_jets=args.jets, seed=11, mpi=False), data, workers=2, progress=False)
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        mlflow.search_experiments()  # create the store's tables outside the timed run
        for owner, name in TIMED:
            timed(owner, name)
        config = PretrainConfig(data=str(data), epochs=args.epochs, batch_size=args.batch_size,
                                image_every=args.image_every, checkpoint_dir=f"{tmp}/ckpt")
        start = time.perf_counter()
        result = pretrain(config, progress=False)
        wall = time.perf_counter() - start
    model_logging = spent["log_model"]
    logging_total = sum(spent.values())
    print(f"pretrain: {args.jets} jets, {args.epochs} epochs, wall {wall:.1f} s, "
          f"throughput {result['throughput_img_s']:.0f} img/s (last epoch)")
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<16} {seconds:7.2f} s  {100 * seconds / wall:5.1f} %")
    per_epoch = sum(spent[k] for k in ("log_metrics", "log_batch", "log_figure"))
    print(f"per-epoch logging (metrics, step metrics, image grids): {per_epoch:.2f} s = "
          f"{100 * per_epoch / wall:.1f} % of wall time")
    print(f"model logging at the end (encoder + MAE): {model_logging:.2f} s = {100 * model_logging / wall:.1f} %")
    print(f"all MLflow calls: {logging_total:.2f} s = {100 * logging_total / wall:.1f} %")


if __name__ == "__main__":
    main()
