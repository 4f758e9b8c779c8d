"""Thread settings that fit the machine, so runs that share it do not thrash.

torch starts one intra-op thread per core it sees, whatever else runs. Two runs on one machine then
each spin twice as many threads as there are cores, and OpenMP's spin-waiting turns that into a
collapse, not a halving: six phase_b runs at once on a 16-core GPU machine made 0.17 steps/s each,
140x slower than one alone. So each `codec` process takes its share:

    threads = CPUs this process may use // runs sharing them

- CPUs this process may use: its CPU affinity (`os.sched_getaffinity`: taskset, Slurm, docker
  --cpuset-cpus), capped by the cgroup CPU quota (docker --cpus, Kubernetes limits: cgroup v2
  `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`), rounded up.
- Runs sharing them: `CODEC_PARALLEL_RUNS` (default 1). `codec sweep -j N` sets it to N for its
  workers (times its own value, so nested launchers compose), as does `codec reproduce`; set it
  yourself when you start several runs by hand: `CODEC_PARALLEL_RUNS=3 codec fit ...`.
- You win: with `OMP_NUM_THREADS` (or `MKL_NUM_THREADS`) set, torch's own reading of it stands and
  nothing is changed; a `torch.set_num_threads()` in your code runs after this and so wins too.

`codec/cli.py` applies this before Lightning loads, for every `codec` / `lightning` command, and
a DDP run divides it again by its processes on this machine once its trainer exists
(`share_with_local_ranks`): two CPU ranks on two cores with two threads each ran at a third of
their speed.
`default_num_workers()` is the matching number of DataLoader worker processes.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PARALLEL_RUNS_ENV = "CODEC_PARALLEL_RUNS"
USER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# The value this module wrote into OMP_NUM_THREADS (before torch was imported): not the user's word.
FITTED_ENV = "CODEC_FITTED_THREADS"
MAX_DATA_WORKERS = 4  # synthetic items cost ~7 ms each on a CPU core: 4 workers feed a GPU step of 15 ms


@dataclass(frozen=True)
class ThreadSettings:
    threads: int  # intra-op threads of this process
    cpus: int  # CPUs this process may use
    runs: int  # runs sharing them
    source: str  # why: "fitted" or the user's variable that decided

    def describe(self) -> str:
        if self.source != "fitted":
            return f"{self.threads} torch threads ({self.source} set by you)"
        return f"{self.threads} torch threads ({self.cpus} CPUs / {self.runs} run{'s' if self.runs > 1 else ''})"


def cgroup_cpu_limit(root: str | Path = "/sys/fs/cgroup", proc_cgroup: str | Path = "/proc/self/cgroup") -> int | None:
    """CPUs the cgroup quota allows this process (rounded up), or None without a quota."""
    root = Path(root)
    limits = []
    for line in _read(proc_cgroup).splitlines():
        hierarchy, _, path = line.partition(":")[2].partition(":")
        relative = path.strip().lstrip("/")
        if hierarchy == "":  # cgroup v2 (at the root, or beside v1 under unified/): every ancestor's quota
            base = root if (root / "cgroup.controllers").exists() else root / "unified"
            for group in _ancestors(base, relative):
                limits.append(_v2_limit(_read(group / "cpu.max")))
        elif "cpu" in hierarchy.split(","):  # cgroup v1
            for base in (root / hierarchy, root / "cpu,cpuacct", root / "cpu"):
                if base.is_dir():
                    for group in _ancestors(base, relative):
                        limits.append(_v1_limit(_read(group / "cpu.cfs_quota_us"), _read(group / "cpu.cfs_period_us")))
                    break
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def _ancestors(base: Path, relative: str) -> list[Path]:
    parts = [p for p in relative.split("/") if p]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _v2_limit(text: str) -> int | None:
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _quota(fields[0], fields[1])


def _v1_limit(quota: str, period: str) -> int | None:
    return _quota(quota.strip(), period.strip()) if quota.strip() not in ("", "-1") else None


def _quota(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def available_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by its cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    return max(1, min(cpus, quota) if quota else cpus)


def parallel_runs(environ: dict | None = None) -> int:
    """How many runs share this machine's CPUs: `CODEC_PARALLEL_RUNS`, default 1."""
    value = (os.environ if environ is None else environ).get(PARALLEL_RUNS_ENV, "").strip()
    if not value:
        return 1
    try:
        runs = int(value)
    except ValueError:
        runs = 0
    if runs < 1:
        raise ValueError(f"{PARALLEL_RUNS_ENV}={value!r}: expected a positive integer (runs sharing the CPUs)")
    return runs


def fitted_threads(environ: dict | None = None) -> ThreadSettings:
    """The threads this process should use, and why (nothing applied)."""
    environ = os.environ if environ is None else environ
    cpus, runs = available_cpus(), parallel_runs(environ)
    for name in USER_THREAD_VARIABLES:
        if environ.get(name, "").strip() and environ.get(name) != environ.get(FITTED_ENV):
            try:
                return ThreadSettings(max(1, int(environ[name])), cpus, runs, name)
            except ValueError:
                break  # torch warns about a malformed value itself; fit instead
    return ThreadSettings(max(1, cpus // runs), cpus, runs, "fitted")


def apply_thread_settings(environ: dict | None = None) -> ThreadSettings:
    """Set torch's intra-op and inter-op threads to this process's share (unless you set them).

    Before torch is imported (`codec compare` never imports it) this only sets OMP_NUM_THREADS,
    which torch reads when it loads, and marks it as ours so child processes fit their own share."""
    environ = os.environ if environ is None else environ
    settings = fitted_threads(environ)
    if settings.source != "fitted":
        return settings
    if "torch" not in sys.modules:
        environ["OMP_NUM_THREADS"] = environ[FITTED_ENV] = str(settings.threads)
        return settings
    import torch

    torch.set_num_threads(settings.threads)
    try:
        torch.set_num_interop_threads(settings.threads)
    except RuntimeError:  # only settable before inter-op work started; then it stays
        pass
    return settings


def share_with_local_ranks(processes: int, environ: dict | None = None) -> ThreadSettings:
    """Re-fit this process's threads when it is one of `processes` ranks of one run on this machine
    (DDP): each takes 1/processes of the run's share. The environment is left as it is: every rank
    is started by re-running the same command and divides once itself."""
    environ = dict(os.environ if environ is None else environ)
    environ[PARALLEL_RUNS_ENV] = str(parallel_runs(environ) * max(1, int(processes)))
    return apply_thread_settings(environ)


def default_num_workers(environ: dict | None = None) -> int:
    """DataLoader workers for one run: one CPU of its share stays with the training loop, the rest
    (at most MAX_DATA_WORKERS) make batches. 0 (load in the loop) when the share is one CPU."""
    settings = fitted_threads(environ)
    share = max(1, settings.cpus // settings.runs)
    return max(0, min(MAX_DATA_WORKERS, share - 1))


def environment_for_children(jobs: int, environ: dict | None = None) -> dict[str, str]:
    """The variables a launcher of `jobs` concurrent runs sets for them (multiplying its own share)."""
    return {PARALLEL_RUNS_ENV: str(parallel_runs(environ) * max(1, int(jobs)))}


@contextmanager
def runs_sharing_cpus(jobs: int) -> Iterator[None]:
    """Processes started inside (spawn, subprocess) take 1/jobs of this process's share each."""
    saved = os.environ.get(PARALLEL_RUNS_ENV)
    os.environ.update(environment_for_children(jobs))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(PARALLEL_RUNS_ENV, None)
        else:
            os.environ[PARALLEL_RUNS_ENV] = saved
