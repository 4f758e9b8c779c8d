"""The Optuna study behind a sweep: storage, sampler, pruner, workers, resuming.

`trials` in a sweep file is the study's target size. Running the same command again resumes: it
counts the trials already decided (complete, pruned, failed with an error, or still running) and
runs only the rest, so an interrupted sweep tops itself up and a larger `--trials` extends it.
With the grid sampler, trial number n takes grid point n, so neither a resumed run nor parallel
workers repeat an arm. A trial interrupted by Ctrl-C or a killed worker (no `error` attribute) is
run again with the same values on the next run.
"""

from __future__ import annotations

import multiprocessing
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from codec.sweep.config import Sweep, SweepFileError
from codec.sweep.trial import objective
from codec.threads import apply_thread_settings, runs_sharing_cpus

HEARTBEAT_S = 60  # a RUNNING trial whose worker is silent for 2x this is failed and retried


def open_storage(url: str):
    """A SQLAlchemy URL (sqlite:///..., postgresql://...) or journal:PATH (a file, safe on NFS)."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}  # wait for a worker's write lock, not fail
    # The heartbeat marks a killed worker's RUNNING trial FAIL (without an `error`), so that
    # `requeue_interrupted` runs it again. Optuna calls it experimental; it is what resuming needs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S)


def make_sampler(sweep: Sweep, worker: int = 0) -> optuna.samplers.BaseSampler:
    spec = dict(sweep.sampler)
    grid = {key: param.grid for key, param in sweep.space.items()}
    finite = all(values is not None for values in grid.values())
    name = spec.pop("name", "GridSampler" if finite else "TPESampler")
    cls = getattr(optuna.samplers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler)):
        raise SweepFileError(f"{sweep.path}: sampler {name!r} is not a class in optuna.samplers")
    if cls is optuna.samplers.GridSampler:
        if not finite:
            infinite = [k for k, v in grid.items() if v is None]
            raise SweepFileError(f"{sweep.path}: GridSampler needs finite choices; {infinite} are intervals")
        return cls(grid, seed=spec.pop("seed", sweep.seed), **spec)
    # Each worker its own seed: equal seeds would propose the same first points in every worker.
    if "seed" in _arguments(cls):
        spec.setdefault("seed", sweep.seed + worker)
    try:
        return cls(**spec)
    except TypeError as e:
        raise SweepFileError(f"{sweep.path}: sampler {name}: {e}") from None


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    spec = dict(sweep.pruner)
    name = spec.pop("name", "MedianPruner")
    cls = getattr(optuna.pruners, name, None)
    if not (isinstance(cls, type) and issubclass(cls, optuna.pruners.BasePruner)):
        raise SweepFileError(f"{sweep.path}: pruner {name!r} is not a class in optuna.pruners")
    try:
        return cls(**spec)
    except TypeError as e:
        raise SweepFileError(f"{sweep.path}: pruner {name}: {e}") from None


def _arguments(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls).parameters)


def load_study(sweep: Sweep, worker: int = 0, create: bool = False) -> optuna.Study:
    storage = open_storage(sweep.storage_url)
    kwargs = {"study_name": sweep.name, "storage": storage, "sampler": make_sampler(sweep, worker),
              "pruner": make_pruner(sweep)}
    if not create:
        return optuna.load_study(**kwargs)
    study = optuna.create_study(direction=sweep.direction, load_if_exists=True, **kwargs)
    if study.direction.name.lower() != sweep.direction:
        raise SweepFileError(f"study {sweep.name!r} in {sweep.storage_url} was created to "
                             f"{study.direction.name.lower()}, the sweep file says {sweep.direction}")
    return study


def decided(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards the target: finished or running, except those interrupted
    without an error (they are run again) and those still waiting in the queue."""
    return [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING
            and (t.state != TrialState.FAIL or "error" in t.user_attrs)]


class StopAtTarget:
    """Stops a worker once the study holds `target` decided trials (other workers' included)."""

    def __init__(self, target: int):
        self.target = target

    def __call__(self, study: optuna.Study, trial) -> None:
        if len(decided(study)) >= self.target:
            study.stop()


def requeue_interrupted(study: optuna.Study) -> int:
    """Enqueue once, with the same values, every trial that failed without an error (interrupted)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    count = 0
    for t in trials:
        if t.state == TrialState.FAIL and "error" not in t.user_attrs and t.number not in retried \
                and t.params and "retry_of" not in t.user_attrs:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            count += 1
    return count


def optimize(sweep: Sweep, n_trials: int, worker: int = 0) -> None:
    apply_thread_settings()  # this worker's share: N workers x all cores each would thrash (codec/threads.py)
    study = load_study(sweep, worker)
    study.optimize(lambda trial: objective(trial, sweep), n_trials=n_trials,
                   callbacks=[StopAtTarget(sweep.trials)], catch=(Exception,), gc_after_trial=True)


def run(sweep: Sweep, jobs: int = 1) -> optuna.Study:
    """Create or resume the study and run it up to `sweep.trials` with `jobs` worker processes."""
    study = load_study(sweep, create=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    requeue_interrupted(study)
    remaining = max(0, sweep.trials - len(decided(study)))  # queued retries run first, within these
    print(f"sweep {sweep.name}: {len(decided(study))} of {sweep.trials} trials done, running {remaining} "
          f"({jobs} worker{'s' if jobs > 1 else ''}); storage {sweep.storage_url}", flush=True)
    if remaining == 0:
        return study
    if jobs <= 1:
        optimize(sweep, remaining)
    else:
        shares = [remaining // jobs + (i < remaining % jobs) for i in range(jobs)]
        context = multiprocessing.get_context("spawn")  # fork would copy torch's threads and locks
        workers = [context.Process(target=optimize, args=(sweep, share, i), name=f"sweep-worker-{i}")
                   for i, share in enumerate(shares) if share]
        with runs_sharing_cpus(len(workers)):  # spawned workers inherit their share (codec/threads.py)
            for w in workers:
                w.start()
        for w in workers:
            w.join()
        failed = [w.name for w in workers if w.exitcode != 0]
        if failed:
            raise RuntimeError(f"worker(s) {failed} exited abnormally; re-run the same command to resume")
    return load_study(sweep)
