"""The Optuna study behind a sweep: storage, sampler, pruner, workers, resuming.

A sweep owes one trial per (arm, seed) (codec/sweep/arms.py): `trials` arms, `seeds` replicates
each. Running the same command again resumes it in one go:

1. trials left RUNNING by a dead worker are failed: at once when the worker ran on this machine
   and its process is gone (the trial records host, pid and process start time), else by Optuna's
   heartbeat after two minutes of silence (workers on other machines);
2. every (arm, seed) no trial stands for is queued with its values: a grid's planned arms not yet
   run, the replicates of an arm, and the re-runs of interrupted trials (same values, same seed);
3. workers run the queue; with a sampler other than the grid they also sample new arms until the
   study holds `trials` of them, each new arm queueing its own replicates.

Nothing is lost or run twice: a queued trial that finds its (arm, seed) already taken by an
earlier trial (two commands resuming the same study at once) and a sampled trial beyond the target
are skipped before they train (pruned, user attribute `skipped`). Grid arms are always queued, so
the study's sampler is never asked for grid values (Optuna's GridSampler fails on queued trials:
KeyError('grid_id') in its after_trial).

Storage is created once, safely: under a file lock for file-backed storages (SQLite, journal), and
retried when another process created the tables first (any SQLAlchemy URL, e.g. PostgreSQL).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from codec.sweep import arms
from codec.sweep.config import Sweep, SweepFileError

HEARTBEAT_S = 60  # a RUNNING trial whose worker is silent for 2x this is failed and re-run
CREATE_ATTEMPTS = 5


class NoStudyError(LookupError):
    """`--report` on a storage that holds no study of that name."""


# ----------------------------------------------------------------------------- storage
def storage_file(url: str) -> Path | None:
    """The local file behind a SQLite or journal URL, else None."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


@contextlib.contextmanager
def storage_lock(sweep: Sweep):
    """Serialises the processes of this machine that create or reconcile the study (a file lock
    beside a file storage, else in the sweep directory)."""
    from filelock import FileLock

    file = storage_file(sweep.storage_url)
    path = Path(f"{file}.lock") if file is not None else sweep.dir / ".study.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


def open_storage(url: str):
    """A SQLAlchemy URL (sqlite:///..., postgresql://...) or journal:PATH (a file, safe on NFS).

    Creating the tables of a fresh database races when several processes open it at once
    (`UNIQUE constraint failed: alembic_version`); the loser retries and finds the tables made."""
    file = storage_file(url)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("journal:"):
        return JournalStorage(JournalFileBackend(str(file)))
    from sqlalchemy.exc import IntegrityError, OperationalError

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:///") else {}
    for attempt in range(CREATE_ATTEMPTS):
        try:
            # The heartbeat fails a RUNNING trial whose worker went silent (on any machine), so that
            # the next run re-runs it. Optuna calls it experimental; it is what resuming needs.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S)
            if storage.engine.name == "sqlite":
                _begin_sqlite_transactions_immediately(storage.engine)
            return storage
        except (IntegrityError, OperationalError):
            if attempt == CREATE_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _begin_sqlite_transactions_immediately(engine) -> None:
    """Make SQLite transactions take the write lock before they read.

    Optuna moves a queued trial to RUNNING with SELECT ... FOR UPDATE, which SQLite ignores, and
    Python's sqlite3 opens a transaction only at the first write: two workers could both pop the
    same queued trial and train it twice (seen with -j 2; optuna#4621). With BEGIN IMMEDIATE (the
    SQLAlchemy recipe for pysqlite) the check and the update are one transaction. PostgreSQL locks
    the row itself."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" below starts transactions

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections pooled while the tables were made predate the listeners


# ----------------------------------------------------------------------------- sampler, pruner
def make_sampler(sweep: Sweep, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The sweep file's sampler, checked. Grid sweeps queue their arms, so their workers run
    with `worker_sampler` instead; this one checks the file."""
    spec = dict(sweep.sampler)
    spec.pop("name", None)
    name = arms.sampler_name(sweep)
    cls = getattr(optuna.samplers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, optuna.samplers.BaseSampler)):
        raise SweepFileError(f"{sweep.path}: sampler {name!r} is not a class in optuna.samplers")
    if cls is optuna.samplers.GridSampler:
        grid = {key: param.grid for key, param in sweep.space.items()}
        infinite = [k for k, v in grid.items() if v is None]
        if infinite:
            raise SweepFileError(f"{sweep.path}: GridSampler needs finite choices; {infinite} are intervals")
        return cls(grid, seed=spec.pop("seed", sweep.seed), **spec)
    # Each worker its own seed: equal seeds would propose the same first points in every worker.
    if "seed" in _arguments(cls):
        spec.setdefault("seed", sweep.seed + worker)
    try:
        return cls(**spec)
    except TypeError as e:
        raise SweepFileError(f"{sweep.path}: sampler {name}: {e}") from None


def worker_sampler(sweep: Sweep, worker: int = 0) -> optuna.samplers.BaseSampler:
    if arms.is_grid(sweep):
        # Never asked for values: every grid trial comes from the queue, and a trial that does not
        # is skipped before it suggests anything.
        return optuna.samplers.RandomSampler(seed=sweep.seed + worker)
    return make_sampler(sweep, worker)


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
    file = storage_file(sweep.storage_url)
    if not create and file is not None and not file.is_file():  # do not leave an empty database behind
        raise NoStudyError(f"no study {sweep.name!r} in {sweep.storage_url}")
    storage = open_storage(sweep.storage_url)
    kwargs = {"study_name": sweep.name, "storage": storage, "sampler": worker_sampler(sweep, worker),
              "pruner": make_pruner(sweep)}
    if not create:
        if sweep.name not in optuna.get_all_study_names(storage):
            raise NoStudyError(f"no study {sweep.name!r} in {sweep.storage_url}")
        return optuna.load_study(**kwargs)
    study = optuna.create_study(direction=sweep.direction, load_if_exists=True, **kwargs)
    if study.direction.name.lower() != sweep.direction:
        raise SweepFileError(f"study {sweep.name!r} in {sweep.storage_url} was created to "
                             f"{study.direction.name.lower()}, the sweep file says {sweep.direction}")
    return study


# ----------------------------------------------------------------------------- dead workers
def worker_identity() -> dict:
    """What a trial records of the process running it, to tell later whether that process is gone."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def is_orphaned(trial) -> bool:
    """A RUNNING trial whose worker ran on this machine and is no longer alive (a pid reused by
    another process has another start time)."""
    import psutil

    worker = trial.user_attrs.get(arms.WORKER)
    if trial.state != TrialState.RUNNING or not worker or worker.get("host") != socket.gethostname():
        return False
    try:
        return abs(psutil.Process(worker["pid"]).create_time() - worker["started"]) > 1.0
    except psutil.NoSuchProcess:
        return True


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of dead workers (this machine's at once, others' by heartbeat)."""
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_orphaned(trial):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(trial.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return failed


# ----------------------------------------------------------------------------- resuming
def reconcile(study: optuna.Study, sweep: Sweep) -> int:
    """Queue every (arm, seed) that no trial stands for; returns how many were queued."""
    queue = arms.missing(sweep, study.get_trials(deepcopy=False))
    for params, seed, retry_of in queue:
        arms.enqueue(study, sweep, params, seed, retry_of)
    return len(queue)


def work_left(study: optuna.Study, sweep: Sweep) -> int:
    """Trials still to run: those queued, plus every replicate of each arm still to sample."""
    trials = study.get_trials(deepcopy=False)
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING and arms.counts(t))
    return waiting + arms.arms_to_sample(sweep, trials) * sweep.seeds


class StopWhenDone:
    """Stops a worker once nothing is queued and no arm is left to sample (other workers' included)."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep

    def __call__(self, study: optuna.Study, trial) -> None:
        if work_left(study, self.sweep) == 0:
            study.stop()


def optimize(sweep: Sweep, worker: int = 0, threads: int | None = None) -> None:
    """One worker: run trials until the study owes none."""
    from codec.sweep.trial import objective

    if threads:  # N workers x all cores each would oversubscribe the CPU many times over
        import torch

        torch.set_num_threads(threads)
    study = load_study(sweep, worker)
    if work_left(study, sweep) == 0:
        return
    study.optimize(lambda trial: objective(trial, sweep), n_trials=None, callbacks=[StopWhenDone(sweep)],
                   catch=(Exception,), gc_after_trial=True)


def prepare(sweep: Sweep) -> tuple[optuna.Study, str]:
    """Create or open the study, fail dead workers' trials, queue what is owed; (study, status line)."""
    with storage_lock(sweep):
        study = load_study(sweep, create=True)
        dead = fail_dead_trials(study)
        queued = reconcile(study, sweep)
    trials = study.get_trials(deepcopy=False)
    owners = arms.taken(trials)
    done = sum(1 for t in owners.values() if t.state.is_finished())
    target = sweep.trials * sweep.seeds
    notes = [f"{len(dead)} trial(s) of dead workers failed ({', '.join(map(str, dead))})"] if dead else []
    retries = sum(1 for t in trials if t.state == TrialState.WAITING and arms.RETRY_OF in t.user_attrs)
    notes += [f"{retries} interrupted trial(s) queued again"] if retries else []
    line = (f"sweep {sweep.name}: {done} of {target} trials done ({sweep.trials} arms x {sweep.seeds} "
            f"seed{'s' if sweep.seeds > 1 else ''}); {queued} newly queued, {work_left(study, sweep)} to run"
            + (f"; {'; '.join(notes)}" if notes else "") + f"; storage {sweep.storage_url}")
    return study, line


def run(sweep: Sweep, jobs: int = 1) -> optuna.Study:
    """Create or resume the study and run what it owes with `jobs` worker processes.

    Raises RuntimeError naming the workers that died (a re-run resumes); the study as it stands
    can still be reported."""
    study, line = prepare(sweep)
    print(line, flush=True)
    jobs = min(max(jobs, 1), work_left(study, sweep))  # a worker with nothing to take would only start and stop
    if jobs == 0:
        return study
    if jobs == 1:
        optimize(sweep)
        return study
    context = multiprocessing.get_context("spawn")  # fork would copy torch's threads and locks
    threads = max(1, (os.cpu_count() or 1) // jobs)
    workers = [context.Process(target=optimize, args=(sweep, i, threads), name=f"sweep-worker-{i}")
               for i in range(jobs)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    failed = [f"{w.name} (exit code {w.exitcode})" for w in workers if w.exitcode != 0]
    if failed:
        raise RuntimeError(f"{', '.join(failed)} died; re-run the same command to resume")
    return study
