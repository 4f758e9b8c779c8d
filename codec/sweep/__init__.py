"""Optuna ablation sweeps over the LightningCLI config (design.md, "Sweeps").

    config.py   the sweep file (sweeps/*.yaml)
    space.py    Hydra override grammar -> Optuna distributions
    trial.py    one trial: CLI arguments, validation of the space, the objective
    pruning.py  the pruning callback (Optuna's pruner at global steps; F3 and divergence at once)
    study.py    storage, sampler, pruner, workers, resuming
    results.py  the results table, importances and plots
    command.py  `codec sweep`
"""

from codec.sweep.config import Sweep, SweepFileError, load_sweep
from codec.sweep.space import Param, SearchSpaceError, parse_space

__all__ = ["Param", "SearchSpaceError", "Sweep", "SweepFileError", "load_sweep", "parse_space"]
