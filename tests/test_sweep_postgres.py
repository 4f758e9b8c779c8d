"""Sweeps whose workers share one PostgreSQL study, as on several machines: a real server (Debian's
`postgresql` package, started by tests/postgres_server.py on 127.0.0.1), commands started at once
on a fresh database, and a worker killed mid-trial whose trial is re-run exactly once by a live
worker through Optuna's heartbeat. Skipped, with the reason, only where the server binaries are
missing (`.ci/run` installs them)."""

import csv
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from lightning.pytorch.callbacks import Callback
from optuna.trial import TrialState

from codec.sweep import arms
from codec.sweep.command import main

from postgres_server import PostgresServer, server_binaries
from sweep_workers import start_together
from test_sweep import QUICK, sweep_file, wait_for

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def postgres():
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or under "
                    "/usr/lib/postgresql/*/bin: apt-get install postgresql")
    server = PostgresServer(binaries).start()
    yield server
    server.stop()


@pytest.fixture
def database(postgres, request) -> str:
    """A fresh database of its own for each test: its URL."""
    return postgres.create_database(re.sub(r"\W", "_", request.node.name)[:60].lower())


def trials_of(url: str, name: str = "tiny_sweep") -> list:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def test_commands_started_together_on_a_fresh_database_create_it_once_and_share_the_queue(tmp_path, database):
    path = sweep_file(tmp_path, {"model.quantizer.normalization": "choice(none, zscore, l2, rms_scale)"}, trials=4)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    # Each its own root: four machines, each with its own disk, one database.
    workers = [context.Process(target=start_together, args=(str(path), str(tmp_path / f"m{i}"), barrier, results,
                                                            database)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    taken = [results.get(timeout=10) for _ in workers]
    assert all(isinstance(t, list) for t in taken), taken  # no error creating Optuna's tables or the study
    assert sorted(n for t in taken for n in t) == list(range(8))  # 4 arms x 2 seeds, queued once, taken once
    trials = trials_of(database)
    assert len(trials) == 8 and all(t.state == TrialState.RUNNING for t in trials)
    assert sorted((arms.params_of(t)["model.quantizer.normalization"], arms.seed_of(t)) for t in trials) == \
        sorted((n, s) for n in ("none", "zscore", "l2", "rms_scale") for s in (0, 1))


class HoldForKill(Callback):
    """In the process given $CODEC_TEST_MARKER, from step 2 of its first trial: writes its pid there
    and blocks (its heartbeat thread still beating) until the test kills it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        marker = os.environ.get("CODEC_TEST_MARKER")
        if marker and trainer.global_step >= 2:
            Path(marker).write_text(str(os.getpid()))
            while True:
                time.sleep(1)


def pairs(trials, state=TrialState.COMPLETE) -> Counter:
    return Counter((t.params["model.quantizer.normalization"], arms.seed_of(t))
                   for t in trials if t.state == state and not arms.is_skipped(t))


def test_a_worker_killed_mid_trial_on_another_machine_is_rerun_once_and_the_study_completes(tmp_path, database):
    path = sweep_file(tmp_path, {"model.quantizer.normalization": "choice(none, zscore)"}, steps=4, seeds=2,
                      overrides=[*QUICK, "--trainer.callbacks+=test_sweep_postgres.HoldForKill"])
    # One thread per worker; 1 s heartbeats, so a silent worker is judged dead after 2 s (default 60 / 120).
    args = ["sweep", str(path), "--no-wandb", f"--storage={database}", "--heartbeat=1"]
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    marker = tmp_path / "worker.pid"
    elsewhere = subprocess.Popen([sys.executable, str(TESTS / "sweep_elsewhere.py"), *args, f"--root={tmp_path / 'b'}"],
                                 env={**env, "CODEC_TEST_MARKER": str(marker)}, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    here = None
    try:
        victim = wait_for(marker, elsewhere)  # the other machine's worker is in the middle of its first trial
        here = subprocess.Popen([sys.executable, "-m", "codec.cli", *args, f"--root={tmp_path / 'a'}"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 600
        while not any(t.state == TrialState.RUNNING and t.user_attrs.get(arms.WORKER, {}).get("host") ==
                      socket.gethostname() for t in trials_of(database)):  # this machine's worker trains too
            assert here.poll() is None, here.communicate()[0]
            assert time.monotonic() < deadline, "this machine's worker never started a trial"
            time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        elsewhere.communicate(timeout=60)
        at_kill = trials_of(database)
        (zombie,) = [t for t in at_kill if t.state == TrialState.RUNNING and
                     t.user_attrs.get(arms.WORKER, {}).get("host") == "another-machine"]
        print("at the kill:", Counter(t.state.name for t in at_kill))

        output = here.communicate(timeout=300)[0]
        assert here.returncode == 0, output
    finally:
        for process in (elsewhere, here):
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
    # The live worker failed the silent trial by heartbeat, queued it again and ran it: every
    # (arm, seed) complete exactly once, nothing left running or queued.
    assert f"interrupted trial(s) {zombie.number} queued again" in output
    trials = trials_of(database)
    print("after the live worker:", Counter(t.state.name for t in trials))
    expected = Counter({(n, s): 1 for n in ("none", "zscore") for s in (0, 1)})
    assert pairs(trials) == expected
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert failed.number == zombie.number and arms.is_interrupted(failed)
    (retry,) = [t for t in trials if t.user_attrs.get(arms.RETRY_OF) == zombie.number]
    assert retry.state == TrialState.COMPLETE and retry.params == zombie.params
    assert arms.seed_of(retry) == arms.seed_of(zombie) and retry.user_attrs[arms.WORKER]["host"] == socket.gethostname()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    table = (tmp_path / "a" / "tiny_sweep" / "results.md").read_text()  # written by the command that ended last
    assert table.count("| complete |") == 4 and f"| {zombie.number} | interrupted |" in table

    # Re-running the same command runs nothing more.
    assert main([*args, f"--root={tmp_path / 'a'}"]) == 0
    rerun = trials_of(database)
    print("after the re-run:", Counter(t.state.name for t in rerun))
    assert [(t.number, t.state) for t in rerun] == [(t.number, t.state) for t in trials]

    # --report from a third machine, with neither worker's run directories: the figures the trials
    # stored in the study fill the table.
    with (tmp_path / "a" / "tiny_sweep" / "results.csv").open() as f:
        written_here = {r["trial"]: r for r in csv.DictReader(f)}
    shutil.rmtree(tmp_path / "a")
    shutil.rmtree(tmp_path / "b")
    assert main([*args, f"--root={tmp_path / 'c'}", "--report"]) == 0
    with (tmp_path / "c" / "tiny_sweep" / "results.csv").open() as f:
        elsewhere_rows = {r["trial"]: r for r in csv.DictReader(f)}
    assert elsewhere_rows.keys() == written_here.keys()
    for number, row in elsewhere_rows.items():
        # A trial stores its figures when it ends; the killed one never did (its run directory, here,
        # holds the validation at step 0 that opens every fit, which no other machine can see).
        columns = ("state", "objective", "snr_db", "rms_ratio", "q0_perplexity", "verdicts", "host") \
            if row["state"] == "complete" else ("state", "objective", "host")
        for column in columns:
            assert row[column] == written_here[number][column], (number, column)
        if row["state"] == "complete":
            assert row["snr_db"] != ""
