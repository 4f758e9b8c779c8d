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
    # Lightning files a step's metrics under the step's index (global_step counts finished steps),
    # so values computed after step N's update share its row in metrics.csv.
    step = max(trainer.global_step - 1, 0)
    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    for logger in trainer.loggers:
        logger.log_metrics(clean, step=step)
    for key, value in clean.items():  # visible to later callbacks (pruning, summary) this step
        trainer.callback_metrics[key] = _tensor(value)


def _tensor(value: float):
    import torch

    return torch.tensor(value)
