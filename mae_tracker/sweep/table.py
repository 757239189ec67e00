"""Who won a sweep and why: one table of every trial on the parent run, with the noise.

The parent run's description (the tag ``mlflow.note.content``, shown as Markdown on the run
page) gets a row per trial: number (a link to the trial run's training view), state, every
parameter, the objective value with its standard error, and the per-epoch monitor's last value
(what the pruner saw). The winner (Optuna's best COMPLETE trial) and the registry's champion
are marked. Beneath it: the margin between the two best trials beside the noise of that
comparison, the same rule the registry uses (``registry.evidence.comparison_noise`` of the
errors the measuring runs logged), and the parameter importances, flagged as meaningless
below :data:`MIN_TRIALS_FOR_IMPORTANCE` complete trials. The same table is logged as
``report/trials_table.csv`` and ``report/trials_table.md``.
"""

from __future__ import annotations

import csv
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
from optuna.trial import FrozenTrial, TrialState

from mae_tracker.registry.evidence import comparison_noise, read_evidence
from mae_tracker.sweep.parent import set_parent_tag
from mae_tracker.sweep.spec import SweepSpec
from mae_tracker.ui_links import run_url

MIN_TRIALS_FOR_IMPORTANCE = 10
NOTE_TAG = "mlflow.note.content"
NOTE_LIMIT = 7900  # MLflow cuts a tag value at 8000 characters; a big study's table is shortened to fit
REPORT_DIR = "report"


@dataclass(frozen=True)
class TrialRow:
    """One trial as the table shows it."""

    number: int
    state: str
    params: dict[str, Any]
    value: float | None  # the objective (COMPLETE trials)
    se: float | None  # its standard error, as the measuring run logged it
    monitor: float | None  # the per-epoch monitor's last reported value
    monitor_epoch: int | None
    run_id: str
    winner: bool = False
    champion: bool = False


def trial_rows(study: optuna.Study, spec: SweepSpec, champion_pretrain_run: str | None = None) -> list[TrialRow]:
    """Every trial of the study but the surplus ones (they never ran), in trial order."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = study.best_trial.number if complete else None
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("surplus"):
            continue
        step = max(trial.intermediate_values) if trial.intermediate_values else None
        done = trial.state == TrialState.COMPLETE  # a pruned trial's "value" is only its last report
        rows.append(TrialRow(
            number=trial.number, state=trial.state.name, params=dict(trial.params),
            value=trial.value if done else None, se=objective_se(trial, spec) if done else None,
            monitor=None if step is None else trial.intermediate_values[step], monitor_epoch=step,
            run_id=trial.user_attrs.get("mlflow_run_id", ""), winner=trial.number == best,
            champion=bool(champion_pretrain_run) and trial.user_attrs.get("pretrain_run_id") == champion_pretrain_run))
    return rows


def objective_se(trial: FrozenTrial, spec: SweepSpec) -> float | None:
    """The objective's standard error from the run that measured it, read as the registry reads
    it; None where that run logged none (a reconstruction loss, a run from before errors)."""
    from mae_tracker.sweep.promotion import sweep_measurement  # the registry pulls in model code: only here

    pretrain = trial.user_attrs.get("pretrain_run_id")
    if not pretrain or trial.value is None:
        return None
    try:
        run_id, key = sweep_measurement(pretrain, spec.metric)
        return read_evidence(mlflow.MlflowClient().get_run(run_id), key, trial.value).se
    except (ValueError, mlflow.exceptions.MlflowException):
        return None


def margin_line(rows: list[TrialRow], spec: SweepSpec) -> str:
    """The gap between the two best COMPLETE trials beside the noise of that comparison."""
    done = sorted((r for r in rows if r.state == "COMPLETE" and r.value is not None),
                  key=lambda r: r.value, reverse=spec.goal == "maximize")
    if len(done) < 2:
        return f"**Margin:** {len(done)} complete trial(s): nothing to rank against."
    first, second = done[0], done[1]
    gap = abs(first.value - second.value)
    head = (f"**Margin:** trial {first.number} leads trial {second.number} by {gap:.4g} in {spec.metric} "
            f"({_num(first.value)} vs {_num(second.value)})")
    if first.se is None or second.se is None:
        return head + "; the runs logged no standard error for it, so the noise is unknown: do not read the ranking."
    noise = comparison_noise(first.se, second.se)
    verdict = ("larger than the noise: the ranking of the top two is real" if gap > noise else
               "within the noise: the top two are not distinguishable, the winner is a coin toss")
    return (f"{head}; noise of the comparison 1.96 x sqrt(se1^2 + se2^2) = {noise:.4g} "
            f"(se {first.se:.3g}, {second.se:.3g}): {verdict}.")


def importance_line(study: optuna.Study) -> str:
    """fANOVA importances of the searched parameters, with the caveat a small study needs."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varying = {k for t in complete for k in t.params if len({repr(s.params.get(k)) for s in complete}) > 1}
    if len(complete) < 2 or len(varying) < 2:
        return (f"**Parameter importances:** not computed ({len(complete)} complete trial(s), {len(varying)} "
                f"varying parameter(s)); meaningless below {MIN_TRIALS_FOR_IMPORTANCE} complete trials anyway.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (ValueError, RuntimeError) as err:
            return f"**Parameter importances:** not computed ({err})."
    shown = ", ".join(f"{k} {v:.2f}" for k, v in found.items())
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return (f"**Parameter importances:** {shown}. MEANINGLESS: only {len(complete)} complete trials (below "
                f"{MIN_TRIALS_FOR_IMPORTANCE}); a forest fitted to so few points ranks noise.")
    return f"**Parameter importances** (fANOVA, {len(complete)} complete trials): {shown}."


def table_records(rows: list[TrialRow], spec: SweepSpec) -> list[dict[str, Any]]:
    """The table as records (the CSV's rows), parameters as columns in the YAML's order."""
    names = list(spec.parameters) + sorted({k for r in rows for k in r.params} - set(spec.parameters))
    return [{"trial": r.number, "state": r.state, **{n: r.params.get(n, "") for n in names},
             spec.metric: "" if r.value is None else r.value, f"{spec.metric}_se": "" if r.se is None else r.se,
             f"last {spec.monitor_key}": "" if r.monitor is None else r.monitor,
             "epoch": "" if r.monitor_epoch is None else r.monitor_epoch,
             "mark": _mark(r), "run_id": r.run_id} for r in rows]


def markdown_table(rows: list[TrialRow], spec: SweepSpec, links: dict[str, str] | None = None) -> str:
    """A Markdown table; ``links`` maps a run id to its URL (the trial number becomes a link)."""
    records = table_records(rows, spec)
    if not records:
        return "(no trials yet)"
    columns = [c for c in records[0] if c not in ("run_id", "epoch")]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row, record in zip(rows, records):
        cells = []
        for column in columns:
            cell = _num(record[column]) if column != "trial" else str(record[column])
            if column == "trial" and links and row.run_id in links:
                cell = f"[{row.number}]({links[row.run_id]})"
            if column == f"last {spec.monitor_key}" and record["epoch"] != "":
                cell += f" (epoch {record['epoch']})"
            if row.winner and column in ("trial", spec.metric):
                cell = f"**{cell}**"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(study: optuna.Study, spec: SweepSpec, rows: list[TrialRow], links: dict[str, str],
                    champion_note: str, limit: int | None = None) -> str:
    """The parent run's description: the spec's own description, then the table and what it means.

    With ``limit``, a table too long for it shows the marked trials and the best others, best
    first, and says where the whole table is."""
    importances = importance_line(study)  # fANOVA fits a forest: once
    text = _report(spec, rows, rows, links, champion_note, importances)
    if limit is None or len(text) <= limit:
        return text
    ranked = sorted(rows, key=lambda r: (not (r.winner or r.champion), r.value is None,
                                         -(r.value or 0.0) if spec.goal == "maximize" else (r.value or 0.0)))
    keep = len(rows)
    while keep > 1 and len(text) > limit:
        keep = max(1, keep * 3 // 4)
        shown = sorted(ranked[:keep], key=lambda r: r.number)
        text = _report(spec, rows, shown, links, champion_note, importances)
    return text[:limit]


def _report(spec: SweepSpec, rows: list[TrialRow], shown: list[TrialRow], links: dict[str, str],
            champion_note: str, importances: str) -> str:
    winner = next((r for r in rows if r.winner), None)
    parts = [spec.description.strip()] if spec.description else []
    cut = (f"\n\nShowing {len(shown)} of {len(rows)} trials (the marked ones and the best); every trial is in "
           f"`{REPORT_DIR}/trials_table.csv`.") if len(shown) < len(rows) else ""
    parts += [f"## Sweep {spec.name}: {spec.metric} ({spec.goal}), objective {spec.objective}",
              markdown_table(shown, spec, links) + cut,
              f"**Winner:** trial {winner.number} ({spec.metric} {_num(winner.value)}"
              + (f" ± {winner.se:.3g} se" if winner.se is not None else "") + ")" if winner else
              "**Winner:** none (no complete trial).",
              f"**Champion:** {champion_note}",
              margin_line(rows, spec),
              importances,
              f"Last `{spec.monitor_key}`: the per-epoch monitor the pruner saw, at the epoch shown. "
              "Mark: W = winner, C = the registry's champion. Table also in artifacts `report/`."]
    return "\n\n".join(parts)


def champion_of(client: mlflow.MlflowClient, parent_id: str) -> tuple[str | None, str]:
    """(the champion's pretrain run id, a line naming it) from the family the sweep promoted to."""
    promotion = client.get_run(parent_id).data.tags.get("promotion", "")
    if not promotion or promotion.startswith("failed"):
        return None, f"not known: this sweep registered nothing ({promotion or 'promote: false'})."
    family = promotion.split()[0]
    try:
        version = client.get_registered_model(family).aliases.get("champion")
        if version is None:
            return None, f"{family} has no champion."
        tags = client.get_model_version(family, str(version)).tags
    except mlflow.exceptions.MlflowException as err:
        return None, f"not known ({err})."
    where = (f"trial {tags.get('trial')} of study {tags.get('study')}" if tags.get("study") else "not a sweep trial")
    return tags.get("pretrain_run_id") or None, f"{family} v{version} ({where})."


def record_table(client: mlflow.MlflowClient, study: optuna.Study, spec: SweepSpec, parent_id: str) -> str:
    """Write the table into the parent run's description and as artifacts; returns the Markdown."""
    champion_run, champion_note = champion_of(client, parent_id)
    rows = trial_rows(study, spec, champion_run)
    links = {}
    for row in rows:
        if row.run_id:
            try:
                links[row.run_id] = run_url(row.run_id)
            except mlflow.exceptions.MlflowException:
                pass
    text = report_markdown(study, spec, rows, links, champion_note, limit=NOTE_LIMIT)
    set_parent_tag(client, parent_id, NOTE_TAG, text)
    with tempfile.TemporaryDirectory() as tmp:
        records = table_records(rows, spec)
        with open(Path(tmp) / "trials_table.csv", "w", newline="") as handle:
            if records:
                writer = csv.DictWriter(handle, fieldnames=list(records[0]))
                writer.writeheader()
                writer.writerows(records)
        (Path(tmp) / "trials_table.md").write_text(report_markdown(study, spec, rows, links, champion_note) + "\n")
        client.log_artifacts(parent_id, tmp, REPORT_DIR)
    return text


def _mark(row: TrialRow) -> str:
    return "".join(m for m, on in (("W", row.winner), ("C", row.champion)) if on)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)
