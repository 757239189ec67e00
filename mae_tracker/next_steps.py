"""What a command prints last: where to look at its run, and the command to run next."""

from __future__ import annotations

import os

from mae_tracker.ui_links import run_where


def _other_rank() -> bool:
    """Under torchrun only rank 0 says what to do next."""
    return os.environ.get("RANK", "0") != "0"


def after_pretrain(run_id: str, encoder_uri: str) -> list[str]:
    """Lines printed at the end of `mae-tracker pretrain`."""
    if _other_rank():
        return []
    return [f"view the run: {run_where(run_id)}",
            f"next: mae-tracker finetune --encoder-uri {encoder_uri}",
            f"  or: mae-tracker probe --encoder-uri {encoder_uri}   (frozen encoder, linear head)",
            "  or: mae-tracker sweep sweeps/quick.yaml   (search mask ratio, depth, lr)",
            f"  or: mae-tracker promote {run_id}   (register the encoder)"]


def after_classifier(run_id: str) -> list[str]:
    """Lines printed at the end of `mae-tracker finetune|probe|scratch`."""
    if _other_rank():
        return []
    return [f"view the run: {run_where(run_id)}",
            f"next: mae-tracker promote {run_id}   (register the classifier: challenger, or champion if better)"]
