"""Arms and seeds: what a sweep's trials stand for, and which ones the study still owes.

An *arm* is one point of the search space (its sampled values); each arm is trained `seeds` times
with `seed_everything` 0..seeds-1, one trial per (arm, seed). A trial records its arm and seed in
user attributes when it starts (queued trials carry them from the queue), so a resumed or parallel
sweep can tell which pairs are done (complete, pruned, failed with an error), in progress, waiting
in the queue, interrupted (FAIL without an error: a killed worker, Ctrl-C) or skipped (a trial that
found its pair already taken, or nothing left to do). Grid sweeps plan their arms: the first
`trials` points of the grid in the sweep file's order.
"""

from __future__ import annotations

import itertools
import json

import optuna
from optuna.trial import FrozenTrial, TrialState

from codec.sweep.config import Sweep

ARM, PARAMS, SEED, SKIPPED, RETRY_OF, WORKER = "arm", "arm_params", "seed", "skipped", "retry_of", "worker"
Pair = tuple[str, int]  # (arm key, seed)


def arm_key(params: dict) -> str:
    """A stable identity for an arm's values (labels round floats; this does not)."""
    return json.dumps(params, sort_keys=True, default=str)


def sampler_name(sweep: Sweep) -> str:
    finite = all(param.grid is not None for param in sweep.space.values())
    return sweep.sampler.get("name", "GridSampler" if finite else "TPESampler")


def is_grid(sweep: Sweep) -> bool:
    return sampler_name(sweep) == "GridSampler"


def grid_arms(sweep: Sweep) -> list[dict]:
    """Every point of a finite space, in the sweep file's order (the last key varies fastest)."""
    keys = list(sweep.space)
    return [dict(zip(keys, values, strict=True))
            for values in itertools.product(*(sweep.space[k].grid for k in keys))]


def planned_arms(sweep: Sweep) -> list[dict] | None:
    """A grid sweep's arms (its first `trials` points); None when a sampler proposes them."""
    return grid_arms(sweep)[: sweep.trials] if is_grid(sweep) else None


# ----------------------------------------------------------------------------- one trial
def params_of(trial: FrozenTrial) -> dict | None:
    """The arm's values: from the queue (a waiting trial has no params yet) or as sampled."""
    return trial.user_attrs.get(PARAMS) or (dict(trial.params) if trial.params else None)


def seed_of(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(SEED, 0))


def pair_of(trial: FrozenTrial) -> Pair | None:
    params = params_of(trial)
    return None if params is None else (arm_key(params), seed_of(trial))


def is_skipped(trial: FrozenTrial) -> bool:
    return SKIPPED in trial.user_attrs


def is_interrupted(trial: FrozenTrial) -> bool:
    """Stopped from outside (killed worker, Ctrl-C, stale heartbeat): run again with the same values."""
    return trial.state == TrialState.FAIL and "error" not in trial.user_attrs and not is_skipped(trial)


def counts(trial: FrozenTrial) -> bool:
    """Whether the trial stands for its (arm, seed): decided, running or queued."""
    return not is_skipped(trial) and not is_interrupted(trial)


# ----------------------------------------------------------------------------- the study
def taken(trials: list[FrozenTrial]) -> dict[Pair, FrozenTrial]:
    """The trial standing for each (arm, seed): the lowest-numbered one that counts."""
    owners: dict[Pair, FrozenTrial] = {}
    for t in sorted(trials, key=lambda t: t.number):
        pair = pair_of(t)
        if pair is not None and counts(t) and pair not in owners:
            owners[pair] = t
    return owners


def known_arms(trials: list[FrozenTrial]) -> dict[str, dict]:
    """Arm key -> values of every arm some trial took (retries of interrupted ones included)."""
    arms: dict[str, dict] = {}
    for t in sorted(trials, key=lambda t: t.number):
        params = params_of(t)
        if params is not None and not is_skipped(t):
            arms.setdefault(arm_key(params), params)
    return arms


def sweep_arms(sweep: Sweep, trials: list[FrozenTrial]) -> list[dict]:
    """The arms the study owes seeds to: a grid's plan, or the arms its sampler proposed so far."""
    planned = planned_arms(sweep)
    return planned if planned is not None else list(known_arms(trials).values())


def missing(sweep: Sweep, trials: list[FrozenTrial]) -> list[tuple[dict, int, int | None]]:
    """(values, seed, interrupted trial it re-runs or None) for each (arm, seed) no trial stands for."""
    owners = taken(trials)
    interrupted = {pair_of(t): t.number for t in sorted(trials, key=lambda t: t.number) if is_interrupted(t)}  # latest
    return [(params, seed, interrupted.get((arm_key(params), seed)))
            for params in sweep_arms(sweep, trials) for seed in range(sweep.seeds)
            if (arm_key(params), seed) not in owners]


def arms_to_sample(sweep: Sweep, trials: list[FrozenTrial]) -> int:
    """New arms a sampler still has to propose (always 0 for a grid, whose arms are queued)."""
    if is_grid(sweep):
        return 0
    pending = sum(1 for t in trials if t.state == TrialState.RUNNING and params_of(t) is None and counts(t))
    return max(0, sweep.trials - len(known_arms(trials)) - pending)


def enqueue(study: optuna.Study, sweep: Sweep, params: dict, seed: int, retry_of: int | None = None) -> None:
    from codec.sweep.space import arm_label

    attrs = {ARM: arm_label(params, sweep.space), PARAMS: params, SEED: seed}
    if retry_of is not None:
        attrs[RETRY_OF] = retry_of
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
