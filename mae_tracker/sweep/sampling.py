"""Samplers and pruners of a sweep, and how each trial's sampler seed is derived.

Every trial is drawn by a sampler seeded from the YAML's seed and the trial's number. The
storage hands out each number once per study, under a lock, whichever process or machine asks,
so two processes started together on one study never draw with the same seed (with one seed
per process they drew identical parameters); a study run again from scratch draws the same
sequence. The seed is recorded on the trial (user attr ``sampler_seed``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from mae_tracker.sweep.spec import SweepSpec

SEED_ATTR = "sampler_seed"


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` of a study whose YAML says ``seed``."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def make_sampler(spec: SweepSpec, seed: int) -> optuna.samplers.BaseSampler:
    """The YAML's sampler with ``seed``. TPE uses the constant liar (Optuna >= 5.0's default,
    stated here): a running trial counts as a bad result, so workers spread out."""
    if spec.method == "grid":
        return optuna.samplers.GridSampler(spec.grid, seed=seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    options = dict(spec.pruner_options)
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(**{"n_startup_trials": 5, "n_warmup_steps": 2, **options})
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(**{"min_resource": 1, **options})
    if spec.pruner == "threshold":
        return optuna.pruners.ThresholdPruner(**options)
    return optuna.pruners.NopPruner()


class PerTrialSeedSampler(optuna.samplers.BaseSampler):
    """The YAML's sampler, made anew for each trial with :func:`trial_seed` of its number.

    The samplers used here keep nothing between trials but their random state (TPE and grid
    read the study's trials each time), so a fresh one per trial changes only the seed.
    Remembers the last trial it began (``last_trial``): the one this process may have to fail
    when it is stopped."""

    def __init__(self, spec: SweepSpec) -> None:
        self._make: Callable[[int], optuna.samplers.BaseSampler] = lambda seed: make_sampler(spec, seed)
        self._seed = spec.seed
        self._current = self._make(trial_seed(spec.seed, 0))
        self.last_trial: int | None = None

    def is_exhausted(self, study: optuna.Study) -> bool:
        """A grid with every point finished or running (never for TPE or random)."""
        current = self._current
        return isinstance(current, optuna.samplers.GridSampler) and current.is_exhausted(study)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._current = self._make(trial_seed(self._seed, trial.number))
        self.last_trial = trial.number
        self._current.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._current.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._current.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._current.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._current.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._current.reseed_rng()
