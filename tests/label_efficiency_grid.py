"""One tiny pretrain run and one label-efficiency grid on it, shared by test_label_efficiency
and test_report (cached per session: both modules read the same runs from the session's store)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

EXPERIMENT = "test-label-efficiency"
FRACTIONS = (0.5, 1.0)
SEEDS = (0, 1)
ARMS = ("finetune", "probe", "scratch")
CHILD_EPOCHS = 2


@functools.cache
def pretrained(jets_file: Path) -> dict[str, Any]:
    from mae_tracker.train.config import PretrainConfig
    from mae_tracker.train.pretrain import pretrain

    config = PretrainConfig(data=str(jets_file), batch_size=32, epochs=2, probe_train_jets=300, probe_val_jets=100,
                            eval_jets=64, image_jets=2, train_fraction=0.4, pretrain_fraction=0.4,
                            val_fraction=0.1, test_fraction=0.1, experiment=EXPERIMENT, log_every_steps=5)
    return pretrain(config, progress=False)


@functools.cache
def grid(jets_file: Path) -> dict[str, Any]:
    """Parent + 12 children; the data file and split come from the pretrain run."""
    from mae_tracker.pipeline.label_efficiency import run_label_efficiency

    return run_label_efficiency(pretrained(jets_file)["encoder_uri"], fractions=FRACTIONS, seeds=SEEDS, arms=ARMS,
                                overrides={"epochs": CHILD_EPOCHS, "batch_size": 32}, experiment=EXPERIMENT,
                                progress=False)
