"""Write a monitor's metrics to every logger at the current step.

A callback that reports every N steps or at validation end logs through the loggers directly:
through `self.log`, Lightning keeps a value until its next `log_every_n_steps` write and files it
under that later step, so a window's statistics would land at the wrong step.
"""

from __future__ import annotations

import math


def log_now(trainer, metrics: dict[str, float]) -> None:
    if not metrics or trainer.sanity_checking:
        return
    # A row's step is the number of optimizer steps the model had taken when the value was measured
    # (codec/validation_schedule.py): what a monitor measures after step N's update is filed at N,
    # the step its verdicts name, beside the validation that followed that update.
    step = trainer.global_step
    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    for logger in trainer.loggers:
        logger.log_metrics(clean, step=step)
    for key, value in clean.items():  # visible to later callbacks (pruning, summary) this step
        trainer.callback_metrics[key] = _tensor(value)


def _tensor(value: float):
    import torch

    return torch.tensor(value)
