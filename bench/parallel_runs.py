"""N training runs at once on one machine: does each get its share, or do they thrash?

Each run is a fresh process training phase_b's codec (plain PyTorch loop, batch 8 x 0.5 s of the
built-in data) for `--steps` steps after a warm-up, and reports its steps per second. Arms,
interleaved over `--rounds` so machine noise hits all alike:

  alone       one run, threads fitted by codec/threads.py (all the CPUs it may use)
  fitted      N runs at once, each told CODEC_PARALLEL_RUNS=N (what `codec sweep -j N` does)
  default     N runs at once with torch's default threads (one per core each: what happened before)

Target: each fitted run reaches at least 80% of (alone / N), i.e. ratio >= 0.8:

    python bench/parallel_runs.py [--runs 2] [--steps 30] [--rounds 2]

OMP_NUM_THREADS / MKL_NUM_THREADS are removed from the runs' environment (they would override the
fitting); other work on the machine skews every arm, hence the load average in the header.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(steps: int, warmup: int, fit_threads: bool) -> None:
    import torch
    import yaml

    from codec.threads import apply_thread_settings

    settings = apply_thread_settings() if fit_threads else None
    sys.path.insert(0, str(ROOT / "bench"))
    from train_step import batches, build, plain_step

    torch.manual_seed(0)
    module = build(yaml.safe_load(open(ROOT / "conf" / "phase_b.yaml"))).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3)
    data = batches(warmup + steps)
    start = 0.0
    for i, batch in enumerate(data):
        if i == warmup:
            start = time.perf_counter()
        plain_step(module, optimizer, batch)
    seconds = time.perf_counter() - start
    print(json.dumps({"steps_per_s": steps / seconds, "threads": torch.get_num_threads(),
                      "fitted": settings.describe() if settings else "torch default"}))


def launch(n: int, steps: int, warmup: int, fit_threads: bool) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.pop("CODEC_PARALLEL_RUNS", None)
    if fit_threads:
        env["CODEC_PARALLEL_RUNS"] = str(n)
    cmd = [sys.executable, __file__, "--child", "--steps", str(steps), "--warmup", str(warmup)]
    if not fit_threads:
        cmd.append("--default-threads")
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(n)]
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"a run failed: {err.strip()[-500:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="runs at once (N)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-default", action="store_true", help="do not measure the default-threads arm")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--default-threads", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.steps, args.warmup, fit_threads=not args.default_threads)
        return

    from codec.threads import available_cpus

    n = args.runs
    print(f"{available_cpus()} CPUs for these runs, load average {os.getloadavg()[0]:.2f} at start; "
          f"{n} runs at once, {args.steps} steps each (phase_b, batch 8 x 0.5 s), {args.rounds} rounds")
    arms = {"alone": [], "fitted": [], "default": []}
    for r in range(args.rounds):
        arms["alone"] += [x["steps_per_s"] for x in launch(1, args.steps, args.warmup, True)]
        fitted = launch(n, args.steps, args.warmup, True)
        arms["fitted"] += [x["steps_per_s"] for x in fitted]
        if not args.skip_default:
            arms["default"] += [x["steps_per_s"] for x in launch(n, args.steps, args.warmup, False)]
        print(f"round {r + 1}: alone {arms['alone'][-1]:.2f} steps/s; {n} fitted ({fitted[0]['fitted']}): "
              + ", ".join(f"{x['steps_per_s']:.2f}" for x in fitted)
              + ("" if args.skip_default else f"; {n} default: "
                 + ", ".join(f"{v:.2f}" for v in arms["default"][-n:])), flush=True)
    share = statistics.median(arms["alone"]) / n
    print(f"\nalone: {statistics.median(arms['alone']):.2f} steps/s (median); its 1/{n} share: {share:.2f}")
    for arm in ("fitted", "default"):
        if arms[arm]:
            worst, median = min(arms[arm]), statistics.median(arms[arm])
            print(f"{n} at once, {arm:<8}: median {median:.2f} steps/s each, worst {worst:.2f}; "
                  f"ratio to the share {median / share:.2f} (worst {worst / share:.2f}; target >= 0.8)")


if __name__ == "__main__":
    main()
