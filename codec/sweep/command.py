"""`codec sweep SWEEP.yaml`: run (or resume) an Optuna ablation study and write its results table.

    codec sweep sweeps/normalization.yaml                 # create or resume; then results.md/.csv/.png
    codec sweep sweeps/normalization.yaml --trials 8 --steps 200 -j 2
    codec sweep sweeps/normalization.yaml --seeds 3       # 3 replicates per arm: mean, 95% interval
    codec sweep sweeps/loss.yaml --storage postgresql://user@host/db -j 2   # the same on every machine
    codec sweep sweeps/normalization.yaml --report        # only the table, from the storage
    codec sweep sweeps/normalization.yaml -- --data.data_dir=/data/speech   # extra CLI overrides
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from codec.sweep.config import SweepFileError, load_sweep
from codec.sweep.space import SearchSpaceError
from codec.sweep.storage import StorageError
from codec.sweep.study import NoStudyError
from codec.sweep.trial import SpaceKeyError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codec sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep_file", help="a sweep YAML, e.g. sweeps/normalization.yaml")
    p.add_argument("--trials", type=int, help="target number of arms in the study (default: the file's)")
    p.add_argument("--seeds", type=int, help="replicates per arm, seed_everything 0..N-1 (default: the file's, else 1)")
    p.add_argument("--steps", type=int, help="training steps per trial (default: the file's)")
    p.add_argument("-j", "--jobs", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--storage", help="SQLAlchemy URL (postgresql://user@host/db for several machines) or "
                   "journal:PATH (default: SQLite under the sweep dir)")
    p.add_argument("--heartbeat", type=int, help="seconds between a running trial's heartbeats; a trial "
                   "silent for twice this (its worker's machine died) is re-run (default: the file's, else 60)")
    p.add_argument("--root", default="runs/sweeps", help="folder of sweep directories (default: runs/sweeps)")
    p.add_argument("--no-wandb", action="store_true", help="leave W&B out of the trials")
    p.add_argument("--report", action="store_true", help="write the results table from the storage; run nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "sweep":  # `codec sweep ...` passes its subcommand name first
        args = args[1:]
    extra: list[str] = []
    if "--" in args:  # everything after `--` goes to every trial's LightningCLI
        args, extra = args[: args.index("--")], args[args.index("--") + 1:]
    opts = build_parser().parse_args(args)
    os.environ.setdefault("WANDB_MODE", "offline")
    try:
        sweep = load_sweep(opts.sweep_file).with_overrides(
            trials=opts.trials, seeds=opts.seeds, steps=opts.steps, storage=opts.storage, root=Path(opts.root),
            heartbeat=opts.heartbeat, wandb=False if opts.no_wandb else None)
        sweep.overrides = [*sweep.overrides, *extra]
        from codec.sweep.storage import check_reachable
        from codec.sweep.study import load_study, make_pruner, make_sampler, run

        make_sampler(sweep), make_pruner(sweep)  # a bad sampler/pruner stops us before any trial
        check_reachable(sweep.storage_url)  # a wrong host or password, before the objective check trains
        if opts.report:
            study = load_study(sweep)
        else:
            from codec.sweep.objective_check import check_objective
            from codec.sweep.trial import validate_space

            validate_space(sweep)
            check_objective(sweep)
    except (SweepFileError, SearchSpaceError, SpaceKeyError, NoStudyError, StorageError) as e:
        print(f"codec sweep: {e}", file=sys.stderr)
        return 2
    status = 0
    if not opts.report:
        try:
            study = run(sweep, jobs=opts.jobs)
        except StorageError as e:  # the server went away
            print(f"codec sweep: {e}", file=sys.stderr)
            return 2
        except RuntimeError as e:  # a worker process died; what the others did is reported below
            print(f"codec sweep: {e}", file=sys.stderr)
            study, status = load_study(sweep), 1
    from codec.sweep.results import write_report

    path = write_report(study, sweep)
    print(path.read_text())
    print(f"written: {path}, {path.with_suffix('.csv')}")
    return status
