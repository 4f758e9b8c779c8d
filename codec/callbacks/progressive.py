"""Progressive RVQ (F1): switch levels on one by one as training advances.

The reports computed `num_active = min(step // every + 1, N)` in the trainer but
never stored it, and never called the setter every step. Here the count lives
in each quantizer's `num_active` buffer (so checkpoints carry it), is set from
`trainer.global_step` when training starts and after every step, and this callback's own
settings are checkpointed too, so a resumed run continues the same schedule.
"""

from __future__ import annotations

from typing import Any

import lightning as L

from codec.callbacks.discovery import find_quantizers
from codec.quantize.schedule import ProgressiveSchedule


class ProgressiveRVQ(L.Callback):
    """Args:
    every: steps between two level activations.
    start: step of the first activation after the initial levels.
    initial: levels active from step 0.
    maximum: cap on active levels (default: every level of each quantizer).
    """

    def __init__(self, every: int = 2000, start: int = 0, initial: int = 1, maximum: int | None = None):
        if every <= 0:
            raise ValueError(f"ProgressiveRVQ.every must be positive, got {every}")
        self.every, self.start, self.initial, self.maximum = every, start, initial, maximum
        self.num_active: int | None = None

    def num_active_at(self, step: int, num_quantizers: int) -> int:
        return ProgressiveSchedule(self.every, self.start, self.initial, self.maximum).num_active_at(step, num_quantizers)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._quantizers = find_quantizers(pl_module)  # once, not a module walk every step

    def apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        quantizers = getattr(self, "_quantizers", None) or find_quantizers(pl_module)
        if not quantizers:
            raise RuntimeError("ProgressiveRVQ found no codec.quantize.ResidualVQ in the model")
        for _, rvq in quantizers:
            n = self.num_active_at(trainer.global_step, rvq.num_quantizers)
            rvq.set_num_active(n)
            self.num_active = n

    def on_train_start(self, trainer, pl_module) -> None:
        self.apply(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The step counter has advanced: this sets the count of the next step (on_train_start set
        # the first), so a checkpoint written now (ModelCheckpoint runs after every other callback)
        # holds the count of the step it is saved at, e.g. 3 levels at step 4000 with every=2000,
        # which is also what a resumed run uses before its first new step.
        self.apply(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"every": self.every, "start": self.start, "initial": self.initial,
                "maximum": self.maximum, "num_active": self.num_active}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key in ("every", "start", "initial", "maximum", "num_active"):
            setattr(self, key, state_dict[key])
