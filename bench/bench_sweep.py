"""Benchmark (not a test): what pruning buys a sweep, and what the online probe costs.

Runs the same sweep twice side by side in one process, against a throw-away SQLite MLflow
store and Optuna storage: identical search space and TPE sampler seed, once with the median
pruner and once without. Prints, for each, the trial-epochs of pretraining spent, the trials
pruned, the best objective (the probe arm's validation AUC) and the wall time. Then the per-epoch
cost of ``val_probe_auc`` as a share of the pretraining epoch, read back from every pretrain run.

    python bench/bench_sweep.py                       # default data, 8 trials of 4 epochs each
    python bench/bench_sweep.py --trials 12 --epochs 6 --data jets.h5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import yaml

SPACE = {
    "mask_ratio": {"distribution": "uniform", "min": 0.5, "max": 0.9},
    "depth": {"distribution": "int", "min": 2, "max": 4},
    "lr": {"distribution": "log_uniform", "min": 3.0e-4, "max": 3.0e-3},
}


def sweep_yaml(folder: Path, name: str, args: argparse.Namespace, pruner: dict) -> Path:
    spec = {
        "name": name, "experiment": "bench-sweep", "method": "tpe", "seed": args.seed,
        "metric": {"name": "val_auc", "goal": "maximize"}, "objective": "probe",
        "n_trials": args.trials, "pruner": pruner, "parameters": SPACE,
        "fixed": {"variant": "vit-nano", "epochs": args.epochs, "batch_size": 128, "image_every": 0,
                  **({"data": args.data} if args.data else {})},
        "downstream": {"epochs": 5, "batch_size": 128}, "promote": False,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="", help="jet file; default: the cached default dataset")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        os.chdir(folder)
        import mlflow
        import optuna

        from mae_tracker.sweep.runner import run_sweep

        rows = []
        pruners = {"median pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
                   "no pruning": {"type": "none"}}
        for label, pruner in pruners.items():
            name = "pruned" if "median" in label else "unpruned"
            started = time.perf_counter()
            summary = run_sweep(sweep_yaml(folder, name, args, pruner), echo=lambda line: None)
            wall = time.perf_counter() - started
            study = optuna.load_study(study_name=name, storage=summary["storage"])
            epochs = sum(len(t.intermediate_values) for t in study.trials)
            pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
            rows.append((label, epochs, pruned, summary.get("best_value", float("nan")), wall))

        print(f"{args.trials} trials x {args.epochs} pretraining epochs, TPE seed {args.seed}, objective: "
              "probe validation AUC")
        print(f"{'':15s} {'trial-epochs':>12s} {'pruned':>7s} {'best objective':>15s} {'wall s':>8s}")
        for label, epochs, pruned, best, wall in rows:
            print(f"{label:15s} {epochs:12d} {pruned:7d} {best:15.4f} {wall:8.1f}")
        saved = 1 - rows[0][1] / rows[1][1]
        print(f"pruning saves {saved:.0%} of the trial-epochs; best objective {rows[0][3] - rows[1][3]:+.4f}")

        client = mlflow.MlflowClient()
        experiment = client.get_experiment_by_name("bench-sweep")
        shares = []
        for run in client.search_runs([experiment.experiment_id], "tags.arm = 'pretrain'"):
            probe = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_probe_time_s")}
            epoch = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "epoch_time_s")}
            shares += [probe[s] / epoch[s] for s in probe if s in epoch]
        print(f"val_probe_auc per epoch: {statistics.median(shares):.1%} of the training pass (median over "
              f"{len(shares)} epochs; min {min(shares):.1%}, max {max(shares):.1%})")


if __name__ == "__main__":
    main()
