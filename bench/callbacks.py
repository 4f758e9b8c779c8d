"""Cost of the diagnostics: training steps per second with every monitor on vs with none.

Same model, data and trainer settings in both arms, validation included (the usage and amplitude
monitors work at validation), interleaved in rounds so machine noise hits both alike. The cadence is
denser than conf/defaults.yaml (codebook window and validation every `--every` steps instead of
250), so the figure is an upper bound. Target: at most 10% slower.

    python bench/callbacks.py [--steps 100] [--every 50] [--rounds 3] [--config conf/phase_a.yaml]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import warnings

import lightning as L
import torch
import yaml

from codec.callbacks import (
    AmplitudeMonitor,
    CodebookMonitor,
    ProgressiveRVQ,
    RunSummary,
    UsageConsistencyMonitor,
)

from train_step import Timed, batches, build


def diagnostics(every: int) -> list[L.Callback]:
    return [ProgressiveRVQ(every=every), CodebookMonitor(every_n_steps=every), UsageConsistencyMonitor(),
            AmplitudeMonitor(mode="warn"), RunSummary(print_verdicts=False)]


def run(config: dict, data, val, every: int, callbacks: list[L.Callback], tmp: str) -> float:
    torch.manual_seed(0)
    timer = Timed()
    # ProgressiveRVQ in both arms: it sets the schedule (what is trained), the monitors only watch.
    trainer = L.Trainer(max_steps=len(data), logger=L.pytorch.loggers.CSVLogger(tmp),
                        callbacks=[timer, *(callbacks or [ProgressiveRVQ(every=every)])],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        val_check_interval=every, check_val_every_n_epoch=None, num_sanity_val_steps=0,
                        log_every_n_steps=25, accelerator="cpu")
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    val_loader = torch.utils.data.DataLoader(val, batch_size=None)
    trainer.fit(build(config), train_dataloaders=loader, val_dataloaders=val_loader)
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default="conf/phase_a.yaml")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    config = yaml.safe_load(open(args.config))
    data, val = batches(args.steps), batches(4)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.rounds} rounds, "
          f"validation and codebook window every {args.every} steps, {args.config}")
    none, every = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            none.append(run(config, data, val, args.every, [], tmp))
            every.append(run(config, data, val, args.every, diagnostics(args.every), tmp))
    n, e = statistics.median(none), statistics.median(every)
    print(f"no monitors        : {args.steps / n:6.2f} steps/s  (median of {args.rounds})")
    print(f"all monitors       : {args.steps / e:6.2f} steps/s")
    print(f"monitoring overhead: {100 * (e / n - 1):+.1f}%  (target <= 10%)")


if __name__ == "__main__":
    main()
