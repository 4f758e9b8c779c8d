"""Train several configs side by side without oversubscribing the machine.

Each run is its own `codec fit` process (a crash stays in its run), `jobs` at a time, each with its
share of this command's threads (`threads_per_run`: several processes with default threads thrashed
140x on a 16-core machine),
logging to `<out>/logs/<name>.log`. A run whose newest run directory already finished with at least
the asked steps is kept, so an interrupted reproduction resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from codec.threads import environment_for_children, fitted_threads

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    name: str
    configs: list[Path]  # -c files in order: the phase, then pieces such as conf/gan.yaml
    args: list[str] = field(default_factory=list)
    seconds: float | None = None
    returncode: int | None = None
    skipped: bool = False


def threads_per_run(jobs: int, environ: dict | None = None) -> int:
    """Threads for each of `jobs` runs at once: this command's share of the CPUs (codec/threads.py:
    affinity and cgroup quota, divided by CODEC_PARALLEL_RUNS when something else shares them)
    split `jobs` ways; your OMP_NUM_THREADS, when you set one, wins."""
    environ = os.environ if environ is None else environ
    return fitted_threads({**environ, **environment_for_children(jobs, environ)}).threads


def config_for(name: str) -> Path:
    """conf/<name>.yaml of the repository, or `name` itself when it is a file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.resolve()
    candidate = REPO / "conf" / f"{name}.yaml"
    if not candidate.is_file():
        raise FileNotFoundError(f"no config conf/{name}.yaml (and {name} is not a YAML file)")
    return candidate


def configs_for(spec: str) -> list[Path]:
    """The -c files of a run spec: `phase_1`, or `phase_1+gan` for conf/phase_1.yaml then conf/gan.yaml."""
    return [config_for(part) for part in spec.split("+")]


def run_name(spec: str) -> str:
    """The run's name (its folder under the output's runs/): the spec, with YAML paths as their stem."""
    return "+".join(Path(part).stem if part.endswith((".yaml", ".yml")) else part for part in spec.split("+"))


def finished(run_root: Path, steps: int) -> bool:
    """The newest version under run_root finished at least `steps` steps (its summary.json says so)."""
    versions = sorted(run_root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]) if
                      p.name.split("_")[1].isdigit() else -1)
    if not versions or not (versions[-1] / "summary.json").is_file():
        return False
    summary = json.loads((versions[-1] / "summary.json").read_text())
    return summary.get("status") in ("finished", "stopped") and int(summary.get("steps", 0)) >= steps


def fit_command(run: Run, root: Path) -> list[str]:
    configs = [arg for config in run.configs for arg in ("-c", str(config))]
    return [sys.executable, "-m", "codec.cli", "fit", *configs, f"--run.root={root}", f"--run.name={run.name}",
            *run.args]


def run_all(runs: list[Run], root: Path, logs: Path, steps: int, jobs: int,
            env: dict[str, str] | None = None, force: bool = False, echo=print) -> list[Run]:
    """Train `runs` (`jobs` at a time, `threads_per_run(jobs)` threads each); returns them with their wall
    time and exit code."""
    logs.mkdir(parents=True, exist_ok=True)
    threads = threads_per_run(jobs)
    child_env = {**os.environ, **(env or {}), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                 **environment_for_children(jobs), "PYTHONUNBUFFERED": "1"}
    waiting = []
    for run in runs:
        if not force and finished(root / run.name, steps):
            run.skipped = True
            echo(f"  {run.name}: already finished ({root / run.name}); --force trains it again")
        else:
            waiting.append(run)
    active: dict[subprocess.Popen, tuple[Run, float, object]] = {}
    while waiting or active:
        while waiting and len(active) < jobs:
            run = waiting.pop(0)
            log = (logs / f"{run.name}.log").open("w")
            process = subprocess.Popen(fit_command(run, root), cwd=REPO, env=child_env, stdout=log,
                                       stderr=subprocess.STDOUT)
            active[process] = (run, time.monotonic(), log)
            echo(f"  {run.name}: started ({threads} thread{'s' if threads > 1 else ''}), log {logs / (run.name + '.log')}")
        time.sleep(1.0)
        for process in [p for p in active if p.poll() is not None]:
            run, started, log = active.pop(process)
            log.close()
            run.seconds, run.returncode = time.monotonic() - started, process.returncode
            if process.returncode != 0:
                state = f"FAILED (exit {process.returncode}; see its log)"
            elif finished(root / run.name, steps):
                state = "done"
            else:  # a SIGTERM'd run exits 0 with an interrupted summary: the next reproduce trains it again
                state = "ended before its last step (interrupted? see its summary.json)"
            echo(f"  {run.name}: {state} in {run.seconds / 60:.1f} min")
    return runs
