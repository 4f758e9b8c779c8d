"""Work for the processes the sweep tests start (spawned): this module imports no Lightning, so a
child starts in about a second."""

import warnings
from pathlib import Path

from codec.sweep.config import load_sweep


def start_together(sweep_path: str, root: str, barrier, results, storage: str | None = None) -> None:
    """What each of several `codec sweep` commands started at once does first: create or open the
    study and queue what it owes (prepare), then take queued trials to run."""
    from codec.sweep.study import load_study, prepare

    warnings.simplefilter("ignore")  # Optuna: "Heartbeat ... is supposed to be used with Study.optimize"
    sweep = load_sweep(sweep_path).with_overrides(root=Path(root), seeds=2, storage=storage)
    barrier.wait()
    try:
        prepare(sweep)
        study = load_study(sweep)
        results.put([study.ask().number for _ in range(2)])
    except Exception as e:  # noqa: BLE001 - the parent reports it
        results.put(f"{type(e).__name__}: {e}")
