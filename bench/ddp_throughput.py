"""Data-parallel training on this machine: does `--trainer.devices=N --trainer.strategy=ddp` pay?

Each arm is a real `codec fit` (phase_b, batch 8 x 0.5 s of the built-in data, validation only at
the start and the end) timed between two training steps by a callback on rank 0, so start-up,
the DDP launch and the validations are not counted. Arms, interleaved over `--rounds`:

  one process   `--trainer.devices=1`, threads fitted to every CPU (codec/threads.py)
  N processes   `--trainer.devices=N --trainer.strategy=ddp`, each rank 1/N of the CPUs (gloo on
                CPU, NCCL with `--accelerator gpu`)

Every rank trains its own batch of 8, so a DDP step trains N x 8 items: the ratio printed is
items per second of N processes over one. 1.0 means DDP buys nothing on this machine:

    python bench/ddp_throughput.py [--devices 2] [--steps 40] [--rounds 2] [--accelerator cpu]

OMP_NUM_THREADS / MKL_NUM_THREADS are removed from the runs' environment (they would override the
fitting).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
CLOCK_ENV = "CODEC_BENCH_CLOCK"
BATCH = 8


class StepClock(L.Callback):
    """Rank 0 writes the seconds between the ends of training steps `start` and `stop`."""

    def __init__(self, start: int = 5, stop: int = 45):
        self.start, self.stop, self.began = start, stop, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.start:
            self.began = time.perf_counter()
        elif step == self.stop and trainer.is_global_zero and self.began is not None:
            Path(os.environ[CLOCK_ENV]).write_text(json.dumps({"seconds": time.perf_counter() - self.began}))


def run(devices: int, steps: int, warmup: int, accelerator: str) -> float:
    """Items per second of one `codec fit` with `devices` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        clock = Path(tmp) / "clock.json"
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env.update({CLOCK_ENV: str(clock), "WANDB_MODE": "disabled",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "bench")])})
        total = warmup + steps + 1
        command = [sys.executable, "-m", "codec.cli", "fit", "-c", str(ROOT / "conf" / "phase_b.yaml"),
                   f"--run.root={tmp}", f"--trainer.max_steps={total}", f"--trainer.val_check_interval={total}",
                   f"--run.checkpoint_every={total}", f"--trainer.accelerator={accelerator}",
                   f"--trainer.devices={devices}", f"--data.batch_size={BATCH}",
                   "--trainer.callbacks+=ddp_throughput.StepClock",
                   f"--trainer.callbacks.start={warmup}", f"--trainer.callbacks.stop={warmup + steps}"]
        if devices > 1:
            command.append("--trainer.strategy=ddp")
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not clock.exists():
            raise RuntimeError(f"codec fit with {devices} devices failed: {done.stderr.strip()[-1500:]}")
        seconds = json.loads(clock.read_text())["seconds"]
    return steps * BATCH * devices / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=2, help="DDP processes (N)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()

    from codec.threads import available_cpus

    print(f"{available_cpus()} CPUs, load average {os.getloadavg()[0]:.2f} at start; phase_b, batch {BATCH} "
          f"per process, {args.steps} timed steps per arm, {args.rounds} rounds, accelerator {args.accelerator}")
    arms: dict[int, list[float]] = {1: [], args.devices: []}
    for r in range(args.rounds):
        for devices in arms:
            arms[devices].append(run(devices, args.steps, args.warmup, args.accelerator))
        print(f"round {r + 1}: 1 process {arms[1][-1]:.1f} items/s; {args.devices} DDP processes "
              f"{arms[args.devices][-1]:.1f} items/s", flush=True)
    one, many = statistics.median(arms[1]), statistics.median(arms[args.devices])
    print(f"\n1 process: {one:.1f} items/s ({one / BATCH:.2f} steps/s); {args.devices} DDP processes: {many:.1f} "
          f"items/s ({many / BATCH / args.devices:.2f} steps/s); ratio {many / one:.2f} (ideal {args.devices})")


if __name__ == "__main__":
    main()
