"""Thread settings that fit the machine (codec/threads.py): the share, the quota, the user's word."""

import os
import subprocess
import sys

import pytest
import torch

from codec import threads
from codec.threads import (
    FITTED_ENV,
    PARALLEL_RUNS_ENV,
    apply_thread_settings,
    cgroup_cpu_limit,
    default_num_workers,
    environment_for_children,
    fitted_threads,
    parallel_runs,
    runs_sharing_cpus,
    share_with_local_ranks,
)


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)


def test_runs_sharing_the_machine_split_its_cpus(eight_cpus):
    assert fitted_threads({}).threads == 8
    assert fitted_threads({PARALLEL_RUNS_ENV: "2"}).threads == 4
    assert fitted_threads({PARALLEL_RUNS_ENV: "3"}).threads == 2
    assert fitted_threads({PARALLEL_RUNS_ENV: "20"}).threads == 1  # never zero
    assert fitted_threads({PARALLEL_RUNS_ENV: "2"}).describe() == "4 torch threads (8 CPUs / 2 runs)"


def test_the_users_own_setting_wins(eight_cpus):
    settings = fitted_threads({"OMP_NUM_THREADS": "3", PARALLEL_RUNS_ENV: "2"})
    assert (settings.threads, settings.source) == (3, "OMP_NUM_THREADS")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(5)
        assert apply_thread_settings({"MKL_NUM_THREADS": "2"}).source == "MKL_NUM_THREADS"
        assert torch.get_num_threads() == 5  # untouched
        assert apply_thread_settings({PARALLEL_RUNS_ENV: "4"}).threads == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_before_torch_loads_only_the_environment_is_set_and_children_refit(eight_cpus, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")  # as in `codec compare`, which never imports torch
    environ = {PARALLEL_RUNS_ENV: "2"}
    assert apply_thread_settings(environ).threads == 4
    assert environ["OMP_NUM_THREADS"] == "4" and environ[FITTED_ENV] == "4"
    child = {**environ, PARALLEL_RUNS_ENV: "4"}  # a launcher's child: our OMP_NUM_THREADS is not the user's
    assert fitted_threads(child).source == "fitted" and fitted_threads(child).threads == 2
    assert fitted_threads({**child, "OMP_NUM_THREADS": "3"}).source == "OMP_NUM_THREADS"  # the user's is


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_run_count_is_named(value):
    with pytest.raises(ValueError, match=f"{PARALLEL_RUNS_ENV}='{value}'"):
        parallel_runs({PARALLEL_RUNS_ENV: value})


def test_launchers_multiply_the_share_for_their_children(monkeypatch):
    assert environment_for_children(3, {}) == {PARALLEL_RUNS_ENV: "3"}
    assert environment_for_children(2, {PARALLEL_RUNS_ENV: "3"}) == {PARALLEL_RUNS_ENV: "6"}
    monkeypatch.setenv(PARALLEL_RUNS_ENV, "2")
    with runs_sharing_cpus(3):
        assert os.environ[PARALLEL_RUNS_ENV] == "6"
    assert os.environ[PARALLEL_RUNS_ENV] == "2"  # restored
    monkeypatch.delenv(PARALLEL_RUNS_ENV)
    with runs_sharing_cpus(2):
        assert parallel_runs() == 2
    assert PARALLEL_RUNS_ENV not in os.environ


def test_ddp_ranks_on_one_machine_share_the_runs_cpus(eight_cpus):
    before = torch.get_num_threads()
    try:
        environ = {PARALLEL_RUNS_ENV: "2"}  # a sweep worker of two, training with 2 DDP ranks
        assert share_with_local_ranks(2, environ).threads == 2 and torch.get_num_threads() == 2
        assert environ == {PARALLEL_RUNS_ENV: "2"}  # rank 1 re-runs the command and divides once itself
        assert share_with_local_ranks(1, {}).threads == 8
        assert share_with_local_ranks(4, {"OMP_NUM_THREADS": "3"}).source == "OMP_NUM_THREADS"  # yours wins
    finally:
        torch.set_num_threads(before)


def test_data_workers_take_what_the_training_loop_leaves(eight_cpus):
    assert default_num_workers({}) == 4  # capped
    assert default_num_workers({PARALLEL_RUNS_ENV: "4"}) == 1  # 2 CPUs: one for the loop, one for data
    assert default_num_workers({PARALLEL_RUNS_ENV: "8"}) == 0  # 1 CPU: load in the loop


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_of_the_group_or_an_ancestor(tmp_path):
    write(tmp_path / "proc", "0::/user.slice/job\n")
    root = tmp_path / "cg"
    write(root / "cgroup.controllers", "cpu\n")
    write(root / "user.slice" / "job" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(root, tmp_path / "proc") is None  # no quota anywhere
    write(root / "user.slice" / "cpu.max", "250000 100000\n")  # 2.5 CPUs: rounded up
    assert cgroup_cpu_limit(root, tmp_path / "proc") == 3
    write(root / "user.slice" / "job" / "cpu.max", "100000 100000\n")
    assert cgroup_cpu_limit(root, tmp_path / "proc") == 1  # the tightest wins


def test_cgroup_v1_quota(tmp_path):
    write(tmp_path / "proc", "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n0::/\n")
    root = tmp_path / "cg"
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "-1\n")
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(root, tmp_path / "proc") is None
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "400000\n")
    assert cgroup_cpu_limit(root, tmp_path / "proc") == 4


def test_affinity_bounds_the_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert threads.available_cpus() == 3
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 2)
    assert threads.available_cpus() == 2


def test_codec_command_applies_the_share_first():
    """Every `codec` command sets the threads in main(), before any subcommand (and Lightning) loads."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    code = ("import atexit, sys, torch; from codec import cli; "
            "atexit.register(lambda: print(torch.get_num_threads(), 'lightning' in sys.modules)); "
            "cli.main(['inspect', '--help'])")
    out = subprocess.run([sys.executable, "-c", code], env={**env, PARALLEL_RUNS_ENV: "2"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == [str(max(1, threads.available_cpus() // 2)), "False"]
