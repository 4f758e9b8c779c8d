"""Optuna ablation sweeps over the LightningCLI config (design.md, "Sweeps").

    config.py           the sweep file (sweeps/*.yaml)
    space.py            Hydra override grammar -> Optuna distributions
    arms.py             arms x seeds: which (arm, seed) pairs the study owes, done, queued or interrupted
    trial.py            one trial: CLI arguments, validation of the space, the objective, its W&B run
    objective_check.py  the objective is a metric the trials log (one training step, before any trial)
    pruning.py          the pruning callback (Optuna's pruner at global steps; F3 and divergence at once)
    storage.py          storages (SQLite, PostgreSQL, journal), the lock for creating and reconciling a study
    study.py            sampler, pruner, workers, dead workers, resuming
    results.py          the arm and trial tables, intervals, importances and plots
    command.py  `codec sweep`
"""

from codec.sweep.config import Sweep, SweepFileError, load_sweep
from codec.sweep.space import Param, SearchSpaceError, parse_space

__all__ = ["Param", "SearchSpaceError", "Sweep", "SweepFileError", "load_sweep", "parse_space"]
