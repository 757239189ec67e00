"""What a command prints last: where to look at its run, and the command to run next."""

from __future__ import annotations

from mae_tracker.ui_links import run_where


def after_pretrain(run_id: str, encoder_uri: str) -> list[str]:
    """Lines printed at the end of `mae-tracker pretrain`."""
    return [f"view the run: {run_where(run_id)}",
            f"next: mae-tracker finetune --encoder-uri {encoder_uri}",
            f"  or: mae-tracker probe --encoder-uri {encoder_uri}   (frozen encoder, linear head)",
            "  or: mae-tracker sweep sweeps/quick.yaml   (search mask ratio, depth, lr)",
            f"  or: mae-tracker promote {run_id}   (register the encoder)"]


def after_classifier(run_id: str) -> list[str]:
    """Lines printed at the end of `mae-tracker finetune|probe|scratch|baseline`."""
    return [f"view the run: {run_where(run_id)}",
            f"next: mae-tracker promote {run_id}   (register the classifier: challenger, or champion if better)"]
