"""`codec reproduce`: train the reports' phases for thousands of steps and put the lab's outcome beside theirs.

    codec reproduce                                   # every phase + waveform_l1; 6000 steps on a GPU, 3000 on CPU
    codec reproduce --steps 1500 --phases phase_1,phase_b --jobs 2
    codec reproduce --report-only                     # rewrite reproduce.md from the run directories
    codec reproduce -- --data.data_dir=/data/speech   # after --: overrides for every run

Each run is a normal run directory under `<out>/runs/<phase>/` with the monitors in warn mode (a
collapse is observed to the end, not stopped), so reproduce.md shows the whole trajectory: RMS
ratio, mel distance, per-level perplexity per step and per validation, and the verdicts with their
steps. This is the lab's regression test at real length: its verdicts must be right on all of it.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

from codec.reproduce.phases import PHASES
from codec.reproduce.runner import Run, configs_for, run_all, run_name, threads_per_run
from codec.threads import available_cpus, parallel_runs

GPU_STEPS, CPU_STEPS = 6000, 3000


def hardware() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{available_cpus()} CPU cores ({cpu}), torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codec reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, help=f"training steps per run (default {GPU_STEPS} on a GPU, {CPU_STEPS} on CPU)")
    p.add_argument("--phases", default=",".join(ph.name for ph in PHASES if ph.default),
                   help="comma-separated config names under conf/ (or YAML paths), `+` joining pieces loaded in "
                        "order (phase_1+gan); default: every phase, phase_b_ema and waveform_l1")
    p.add_argument("--out", default="runs/reproduce", help="output folder (default runs/reproduce)")
    p.add_argument("--jobs", type=int, help="runs at once (default: as many as the CPUs allow, one thread each at least)")
    p.add_argument("--val-every", type=int, default=250, help="steps between validations (default 250)")
    p.add_argument("--report-only", action="store_true", help="write reproduce.md from existing runs; train nothing")
    p.add_argument("--force", action="store_true", help="train again runs that already finished")
    p.add_argument("--wandb", action="store_true", help="also log to W&B (offline unless WANDB_MODE is set)")
    return p


def default_jobs(runs: int, cpus: int, gpu: bool) -> int:
    """Runs at once: on a GPU two CPU threads feed each run; on CPU one thread per run at least."""
    per_run = 2 if gpu else 1
    return max(1, min(runs, cpus // per_run))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "reproduce":
        args = args[1:]
    extra: list[str] = []
    if "--" in args:
        args, extra = args[: args.index("--")], args[args.index("--") + 1:]
    opts = build_parser().parse_args(args)
    import torch

    gpu = torch.cuda.is_available()
    steps = opts.steps or (GPU_STEPS if gpu else CPU_STEPS)
    if steps < 1 or opts.val_every < 1:
        print("codec reproduce: --steps and --val-every must be positive", file=sys.stderr)
        return 2
    specs = [n.strip() for n in opts.phases.split(",") if n.strip()]
    try:
        configs = {run_name(spec): configs_for(spec) for spec in specs}
    except FileNotFoundError as error:
        print(f"codec reproduce: {error}", file=sys.stderr)
        return 2
    names = list(configs)
    out = Path(opts.out)
    root = out / "runs"
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    given = [*args, *(["--", *extra] if extra else [])]  # without the subcommand `codec` passes on
    command = "codec reproduce " + " ".join(shlex.quote(a) for a in given)
    minutes = None
    if not opts.report_only:
        cpus = max(1, available_cpus() // parallel_runs())  # this command's share, when something else shares the CPUs
        jobs = opts.jobs or default_jobs(len(names), cpus, gpu)
        threads = threads_per_run(jobs)
        run_args = [f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={min(opts.val_every, steps)}",
                    "--trainer.check_val_every_n_epoch=null", "--diagnostics.amplitude.mode=warn",
                    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                    f"--run.wandb={'true' if opts.wandb else 'false'}", *extra]
        runs = [Run(name, configs[name], run_args) for name in names]
        print(f"codec reproduce: {len(runs)} runs of {steps} steps, {jobs} at a time with {threads} thread(s) each, "
              f"on {'GPU' if gpu else 'CPU'}; runs in {root}")
        started = time.monotonic()
        run_all(runs, root, out / "logs", steps, jobs, force=opts.force)
        minutes = (time.monotonic() - started) / 60
        timings.update({r.name: r.seconds for r in runs if r.seconds is not None})
        out.mkdir(parents=True, exist_ok=True)
        timings_path.write_text(json.dumps(timings, indent=2))
        failed = [r.name for r in runs if r.returncode not in (None, 0)]
        if failed:
            print(f"codec reproduce: {', '.join(failed)} failed (their logs are in {out / 'logs'}); "
                  "the report shows what they logged", file=sys.stderr)
    from codec.reproduce.report import write

    path = write(names, root, out, command, hardware(), minutes, timings)
    print(path.read_text())
    print(f"written: {path} and its figures in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
