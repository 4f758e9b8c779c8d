"""The Optuna study behind a sweep: sampler, pruner, workers, resuming (storage: storage.py).

A sweep owes one trial per (arm, seed) (codec/sweep/arms.py): `trials` arms, `seeds` replicates
each. Every command (and every worker it starts) recovers what dead workers left, before its first
trial, after each trial, and while it waits for other workers' trials to end:

1. trials left RUNNING by a dead worker are failed: at once when the worker ran on this machine
   and its process is gone (the trial records host, boot time, pid and process start time), else
   by Optuna's heartbeat after 2 x `heartbeat` seconds of silence (workers on other machines);
2. every (arm, seed) no trial stands for is queued with its values: a grid's planned arms not yet
   run, the replicates of an arm, and the re-runs of interrupted trials (same values, same seed);
3. workers run the queue; with a sampler other than the grid they also sample new arms until the
   study holds `trials` of them, each new arm queueing its own replicates;
4. a worker with nothing left to run waits while trials run elsewhere (one of them may die and be
   queued again), and stops when the study owes nothing and nothing runs. So a sweep spread over
   machines ends complete while any one of its commands is alive, and the command that finishes
   last writes the complete results; running the same command again resumes whatever is left.

Nothing is lost or run twice: a queued trial that finds its (arm, seed) already taken by an
earlier trial (two commands resuming the same study at once) and a sampled trial beyond the target
are skipped before they train (pruned, user attribute `skipped`). Grid arms are always queued, so
the study's sampler is never asked for grid values (Optuna's GridSampler fails on queued trials:
KeyError('grid_id') in its after_trial). Steps 1 and 2 run under the storage lock (storage.py).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
import warnings

import optuna
from optuna.trial import TrialState

from codec.sweep import arms
from codec.sweep.config import Sweep, SweepFileError
from codec.sweep.storage import display_url, open_storage, storage_file, storage_lock
from codec.threads import apply_thread_settings, runs_sharing_cpus

POLL_S = 5.0  # how often (at most) a worker with nothing to run looks for dead workers' trials


class NoStudyError(LookupError):
    """`--report` on a storage that holds no study of that name."""


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
        raise NoStudyError(f"no study {sweep.name!r} in {display_url(sweep.storage_url)}")
    storage = open_storage(sweep.storage_url, heartbeat=sweep.heartbeat)
    kwargs = {"study_name": sweep.name, "storage": storage, "sampler": worker_sampler(sweep, worker),
              "pruner": make_pruner(sweep)}
    if not create:
        if sweep.name not in optuna.get_all_study_names(storage):
            raise NoStudyError(f"no study {sweep.name!r} in {display_url(sweep.storage_url)}")
        return optuna.load_study(**kwargs)
    study = optuna.create_study(direction=sweep.direction, load_if_exists=True, **kwargs)
    if study.direction.name.lower() != sweep.direction:
        raise SweepFileError(f"study {sweep.name!r} in {display_url(sweep.storage_url)} was created to "
                             f"{study.direction.name.lower()}, the sweep file says {sweep.direction}")
    return study


# ----------------------------------------------------------------------------- dead workers
def this_machine() -> dict:
    """Host name and boot time: two machines that share a host name (containers, cloned images)
    still tell their processes apart, and a pid from before a reboot is not taken for a live one."""
    import psutil

    return {"host": socket.gethostname(), "boot": psutil.boot_time()}


def worker_identity() -> dict:
    """What a trial records of the process running it, to tell later whether that process is gone."""
    import psutil

    return {**this_machine(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def on_this_machine(trial) -> bool:
    worker, here = trial.user_attrs.get(arms.WORKER), this_machine()
    if not worker or worker.get("host") != here["host"]:
        return False
    return abs(worker.get("boot", here["boot"]) - here["boot"]) < 2.0  # trials recorded before "boot" existed


def is_orphaned(trial) -> bool:
    """A RUNNING trial whose worker ran on this machine and is no longer alive (a pid reused by
    another process has another start time; a killed `-j` worker stays a zombie until its command
    reaps it, which it may do only after the other workers end)."""
    import psutil

    if trial.state != TrialState.RUNNING or not on_this_machine(trial):
        return False
    worker = trial.user_attrs[arms.WORKER]
    try:
        process = psutil.Process(worker["pid"])
        return abs(process.create_time() - worker["started"]) > 1.0 or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of dead workers (this machine's at once, others' by heartbeat);
    returns their numbers."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    failed = [t.number for t in running if is_orphaned(t)]
    for number in failed:
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    now = {t.number: t for t in study.get_trials(deepcopy=False)}
    stale = [t.number for t in running if t.number not in failed and arms.is_interrupted(now[t.number])]
    return sorted(failed + stale)


def running_elsewhere(study: optuna.Study) -> list:
    """RUNNING trials of other workers that will end one way or the other: each either finishes
    or, its worker dead, is failed (this machine's by pid, any machine's by heartbeat). A trial of
    a storage without heartbeat on another machine is not waited for: nothing would ever fail it."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    heartbeat = is_heartbeat_enabled(study._storage)
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if arms.WORKER in t.user_attrs and (heartbeat or on_this_machine(t))]


# ----------------------------------------------------------------------------- resuming
def reconcile(study: optuna.Study, sweep: Sweep) -> list[tuple[dict, int, int | None]]:
    """Queue every (arm, seed) that no trial stands for; returns what was queued (values, seed,
    the interrupted trial it re-runs or None)."""
    queue = arms.missing(sweep, study.get_trials(deepcopy=False))
    for params, seed, retry_of in queue:
        arms.enqueue(study, sweep, params, seed, retry_of)
    return queue


def recover(study: optuna.Study, sweep: Sweep) -> tuple[list[int], list[int]]:
    """Fail dead workers' trials and queue what the study owes, under the storage lock (so two
    commands never queue the same pair); (trials failed here, interrupted trials queued again).

    An interrupted trial is queued again once, whoever failed it (this call, another worker's, or
    Optuna's own heartbeat check at the start of a trial)."""
    with storage_lock(sweep.storage_url, sweep.dir):
        dead = fail_dead_trials(study)
        queued = reconcile(study, sweep)
    return dead, [retry_of for _, _, retry_of in queued if retry_of is not None]


def work_left(study: optuna.Study, sweep: Sweep) -> int:
    """Trials still to run: those queued, plus every replicate of each arm still to sample."""
    trials = study.get_trials(deepcopy=False)
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING and arms.counts(t))
    return waiting + arms.arms_to_sample(sweep, trials) * sweep.seeds


def wait_for_work(study: optuna.Study, sweep: Sweep) -> bool:
    """True as soon as there is a trial to run; False once the study owes nothing and no trial runs
    anywhere. Meanwhile, every few seconds, dead workers' trials are failed and queued again."""
    poll, told = min(POLL_S, sweep.heartbeat), False
    while True:
        _, rerun = recover(study, sweep)
        if rerun:
            print(f"sweep {sweep.name}: interrupted trial(s) {', '.join(map(str, rerun))} queued again "
                  "(their workers died)", flush=True)
        if work_left(study, sweep) > 0:
            return True
        running = running_elsewhere(study)
        if not running:
            return False
        if not told:
            print(f"sweep {sweep.name}: nothing left to start; waiting for trial(s) "
                  f"{', '.join(str(t.number) for t in running)} running in other workers", flush=True)
            told = True
        time.sleep(poll)


class StopWhenDone:
    """After each trial: go on while the study owes trials (dead workers' included), stop when it
    owes none and no trial runs anywhere."""

    def __init__(self, sweep: Sweep):
        self.sweep = sweep

    def __call__(self, study: optuna.Study, trial) -> None:
        if not wait_for_work(study, self.sweep):
            study.stop()


def optimize(sweep: Sweep, worker: int = 0) -> None:
    """One worker: run trials until the study owes none."""
    from codec.sweep.trial import objective

    apply_thread_settings()  # this worker's share: N workers x all cores each would thrash (codec/threads.py)
    study = load_study(sweep, worker)
    if not wait_for_work(study, sweep):
        return
    study.optimize(lambda trial: objective(trial, sweep), n_trials=None, callbacks=[StopWhenDone(sweep)],
                   catch=(Exception,), gc_after_trial=True)


def prepare(sweep: Sweep) -> tuple[optuna.Study, str]:
    """Create or open the study, fail dead workers' trials, queue what is owed; (study, status line)."""
    with storage_lock(sweep.storage_url, sweep.dir):
        study = load_study(sweep, create=True)
        dead = fail_dead_trials(study)
        queued = len(reconcile(study, sweep))
    trials = study.get_trials(deepcopy=False)
    owners = arms.taken(trials)
    done = sum(1 for t in owners.values() if t.state.is_finished())
    target = sweep.trials * sweep.seeds
    notes = [f"{len(dead)} trial(s) of dead workers failed ({', '.join(map(str, dead))})"] if dead else []
    retries = sum(1 for t in trials if t.state == TrialState.WAITING and arms.RETRY_OF in t.user_attrs)
    notes += [f"{retries} interrupted trial(s) queued again"] if retries else []
    running = len(running_elsewhere(study))
    notes += [f"{running} running in other workers"] if running else []
    line = (f"sweep {sweep.name}: {done} of {target} trials done ({sweep.trials} arms x {sweep.seeds} "
            f"seed{'s' if sweep.seeds > 1 else ''}); {queued} newly queued, {work_left(study, sweep)} to run"
            + (f"; {'; '.join(notes)}" if notes else "") + f"; storage {display_url(sweep.storage_url)}")
    return study, line


def run(sweep: Sweep, jobs: int = 1) -> optuna.Study:
    """Create or resume the study and run what it owes with `jobs` worker processes.

    Raises RuntimeError naming the workers that died when the study still owes trials (a re-run
    resumes); the study as it stands can still be reported."""
    study, line = prepare(sweep)
    print(line, flush=True)
    # A worker with nothing to take would only start and stop (one still waits for others' trials).
    jobs = min(max(jobs, 1), max(work_left(study, sweep), 1))
    if jobs == 1:
        optimize(sweep)
        return study
    context = multiprocessing.get_context("spawn")  # fork would copy torch's threads and locks
    workers = [context.Process(target=optimize, args=(sweep, i), name=f"sweep-worker-{i}") for i in range(jobs)]
    with runs_sharing_cpus(jobs):  # spawned workers inherit their share of the CPUs (codec/threads.py)
        for w in workers:
            w.start()
    for w in workers:
        w.join()
    failed = [f"{w.name} (exit code {w.exitcode})" for w in workers if w.exitcode != 0]
    if failed and (work_left(study, sweep) or running_elsewhere(study)):
        raise RuntimeError(f"{', '.join(failed)} died; re-run the same command to resume")
    if failed:  # the others re-ran its trial
        print(f"sweep {sweep.name}: {', '.join(failed)} died; the other workers re-ran its trial", flush=True)
    return study
