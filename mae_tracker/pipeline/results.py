"""The pipeline's results table: arm x labelled fraction, mean and spread over seeds.

Read from the finished child runs (never from memory), so a rerun or the report shows the
same numbers; wall time and epochs come from each run too.
"""

from __future__ import annotations

import math

import mlflow
import pandas as pd

from mae_tracker.baselines.config import BASELINES
from mae_tracker.train.config import DOWNSTREAM_ARMS

COLUMNS = ["arm", "label_fraction", "labelled_jets", "seeds", "test_auc_mean", "test_auc_std", "test_acc_mean",
           "test_acc_std", "epochs", "wall_s_mean", "run_ids"]
# Order in the table: the MAE arms, then the baselines they must beat.
ARM_ORDER = (*DOWNSTREAM_ARMS, *BASELINES)


def summarize(client: mlflow.MlflowClient, table: pd.DataFrame) -> pd.DataFrame:
    """``table``: label_efficiency_frame rows (arm, label_fraction, labelled_jets, seed, test_auc,
    test_acc, run_id). Spread = sample standard deviation over seeds (0 for one seed)."""
    if table.empty:
        return pd.DataFrame(columns=COLUMNS)
    extra = {run_id: _run_facts(client, run_id) for run_id in table.run_id}
    table = table.assign(epochs=[extra[r][0] for r in table.run_id], wall_s=[extra[r][1] for r in table.run_id])
    rows = []
    for (arm, fraction), group in table.groupby(["arm", "label_fraction"], sort=False):
        rows.append({"arm": arm, "label_fraction": fraction, "labelled_jets": int(group.labelled_jets.median()),
                     "seeds": len(group), "test_auc_mean": group.test_auc.mean(),
                     "test_auc_std": group.test_auc.std(ddof=1) if len(group) > 1 else 0.0,
                     "test_acc_mean": group.test_acc.mean(),
                     "test_acc_std": group.test_acc.std(ddof=1) if len(group) > 1 else 0.0,
                     "epochs": ",".join(sorted({str(e) for e in group.epochs})),
                     "wall_s_mean": group.wall_s.mean(), "run_ids": " ".join(r[:8] for r in group.run_id)})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    order = {arm: i for i, arm in enumerate(ARM_ORDER)}
    frame["_order"] = frame.arm.map(lambda a: order.get(a, len(order)))
    return frame.sort_values(["label_fraction", "_order"]).drop(columns="_order").reset_index(drop=True)


def _run_facts(client: mlflow.MlflowClient, run_id: str) -> tuple[str, float]:
    """(training length as the run logged it, wall seconds). Epochs mean nothing to the single
    observable (a cut) and the GBDT (boosting rounds, chosen on validation)."""
    run = client.get_run(run_id)
    wall = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else math.nan
    params = run.data.params
    if "gbdt_rounds" in params:
        return f"{params['gbdt_rounds']} rounds", wall
    if "observable" in params:
        return "-", wall
    return params.get("epochs", "-"), wall


def markdown(summary: pd.DataFrame) -> str:
    """The table as Markdown: test AUC and accuracy as mean +- spread over seeds."""
    lines = ["| labelled jets (fraction) | arm | test AUC | test accuracy | seeds | epochs | wall s / run | runs |",
             "|---|---|---|---|---|---|---|---|"]
    for row in summary.itertuples():
        lines.append(f"| {row.labelled_jets} ({row.label_fraction:g}) | {row.arm} | "
                     f"{row.test_auc_mean:.4f} ± {row.test_auc_std:.4f} | {row.test_acc_mean:.4f} ± "
                     f"{row.test_acc_std:.4f} | {row.seeds} | {row.epochs} | {row.wall_s_mean:.0f} | {row.run_ids} |")
    return "\n".join(lines)
