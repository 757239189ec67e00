"""Benchmark (not a test): the label-efficiency grid today vs capped (issue 21, "cheaper studies").

One MAE encoder is pretrained on the default data; then every (arm, labelled fraction, seed) of a
grid is trained twice, alternating: as the pipeline runs it today (every validation jet scored
every epoch, every epoch trained) and capped (``--val-jets`` validation jets, ``--patience``
epochs without a better validation loss stop the run). Reported per (arm, fraction): test AUC
mean ± std over seeds both ways, and the time both ways. Time is the process's CPU seconds
(one torch thread, so other jobs on a shared machine do not inflate it) and wall seconds.

    python bench/bench_grid.py                      # default data, ~30 min on a quiet 2-core machine
    python bench/bench_grid.py --seeds 0 --fractions 0.03 --arms finetune   # a quick look
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

# The pipeline's small-label budgets (sweeps/pipeline-qg.yaml by_fraction), by labelled fraction.
BUDGET = {0.03: {"epochs": 20, "batch_size": 16}, 0.3: {"epochs": 12, "batch_size": 64},
          1.0: {"epochs": 6, "batch_size": 128}}
PIXELS = {"pixel_transform": "log1p", "pixel_scaling": "channel"}


def timed(fn, *args, **kwargs) -> tuple[dict, float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="", help="jet file (default: the shipped default data)")
    parser.add_argument("--arms", nargs="+", default=["finetune", "probe", "scratch"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.03, 0.3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--val-jets", type=int, default=300, help="the capped way's validation jets")
    parser.add_argument("--patience", type=int, default=4, help="the capped way's patience")
    parser.add_argument("--out", default="", help="also write the table (Markdown) here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import os

    store = tempfile.mkdtemp(prefix="bench-grid-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    from mae_tracker.train.config import DownstreamConfig, PretrainConfig
    from mae_tracker.train.downstream import train_classifier
    from mae_tracker.train.pretrain import pretrain

    encoder = pretrain(PretrainConfig(data=args.data, epochs=args.pretrain_epochs, experiment="bench-grid",
                                      checkpoint_dir=f"{store}/ckpt", num_threads=1, **PIXELS),
                       progress=False)["encoder_uri"]
    print(f"encoder {encoder}", flush=True)
    ways = {"today": {}, "capped": {"val_jets": args.val_jets, "patience": args.patience}}
    rows: dict[tuple[str, float, str], list[tuple[float, float, float, int]]] = {}
    for fraction in args.fractions:
        for arm in args.arms:
            for seed in args.seeds:
                for way, extra in (ways.items() if seed % 2 == 0 else reversed(ways.items())):  # alternate order
                    config = DownstreamConfig.for_arm(
                        arm, data=args.data, encoder_uri=encoder, seed=seed,  # scratch: its architecture only
                        label_fraction=fraction, experiment="bench-grid", checkpoint_dir=f"{store}/ckpt",
                        num_threads=1, **BUDGET.get(fraction, BUDGET[1.0]), **extra)
                    result, cpu, wall = timed(train_classifier, config, progress=False)
                    epochs = int(result.get("epochs_trained", config.epochs))
                    rows.setdefault((arm, fraction, way), []).append((result["test_auc"], cpu, wall, epochs))
                    print(f"{arm:8s} {fraction:5g} seed {seed} {way:6s}: test AUC {result['test_auc']:.4f}, "
                          f"{epochs} epochs, {cpu:.1f} CPU s, {wall:.1f} wall s", flush=True)
    lines = ["| arm | fraction | today: test AUC | capped: test AUC | today CPU s | capped CPU s | ratio | "
             "capped epochs |", "|---|---|---|---|---|---|---|---|"]
    totals = {"today": 0.0, "capped": 0.0}
    for arm in args.arms:
        for fraction in args.fractions:
            today, capped = rows[(arm, fraction, "today")], rows[(arm, fraction, "capped")]
            auc = {way: [r[0] for r in rs] for way, rs in (("today", today), ("capped", capped))}
            cpu = {way: sum(r[1] for r in rs) for way, rs in (("today", today), ("capped", capped))}
            totals["today"] += cpu["today"]
            totals["capped"] += cpu["capped"]
            spread = {way: statistics.stdev(v) if len(v) > 1 else float("nan") for way, v in auc.items()}
            lines.append(f"| {arm} | {fraction:g} | {statistics.mean(auc['today']):.4f} ± {spread['today']:.4f} | "
                         f"{statistics.mean(auc['capped']):.4f} ± {spread['capped']:.4f} | {cpu['today']:.0f} | "
                         f"{cpu['capped']:.0f} | {cpu['capped'] / cpu['today']:.2f} | "
                         f"{', '.join(str(r[3]) for r in capped)} |")
    lines.append(f"\nWhole grid: today {totals['today']:.0f} CPU s, capped {totals['capped']:.0f} CPU s "
                 f"(ratio {totals['capped'] / totals['today']:.2f}); encoder {encoder}")
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
