"""Validation where a fit starts and where it ends, every validation filed under its step.

Lightning validates every `val_check_interval` steps only, so a 300-step run with the default
interval of 250 had a single validation, at step 250, and no start or end point to compare.
`ValidateAtStartAndEnd` adds a validation before the first training step of every fit (step 0 of
a fresh run; the checkpoint's step of a resumed one, where the run it continues validated after
saving) and one after the last step (through Lightning's own end-of-training validation: asking
the loop to stop at `max_steps` makes it validate, as early stopping does).

Steps in metrics.csv: a row's `step` is the number of optimizer steps the model had taken when the
value was measured. Lightning files a training step's metrics that way (its forward ran before the
update), but files a validation that follows step N's update under N - 1; this callback logs the
validation under `trainer.global_step`, so the step-0
validation lands at 0 and the last validation of a 300-step run at 300, the step `summary.json`
reports.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities.model_helpers import is_overridden


class ValidateAtStartAndEnd(L.Callback):
    """Args:
    at_start: validate before the first training step of every fit.
    at_end: validate after the last step (`max_steps`) when the interval does not land there.
    """

    def __init__(self, at_start: bool = True, at_end: bool = True):
        self.at_start = at_start
        self.at_end = at_end
        self._logged_batches: int | None = None
        self._start_pending = False
        self.validating_at_start = False  # true during the start validation (monitors may treat it as a baseline)

    def on_train_start(self, trainer, pl_module) -> None:
        self._start_pending = self.at_start and _validation_enabled(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Run from the first batch, not from on_train_start: by then a resumed fit has finished restoring
        # its loops (a validation run earlier left a resumed epoch without batches).
        if not self._start_pending:
            return
        self._start_pending = False
        loop = trainer.fit_loop.epoch_loop
        first_loop_iter = trainer._logger_connector._first_loop_iter  # as Lightning's own mid-epoch validation
        trainer.validating = True
        self.validating_at_start = True
        try:
            loop.val_loop.run()
        finally:
            self.validating_at_start = False
            trainer._logger_connector._first_loop_iter = first_loop_iter
            trainer.training = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.at_end and 0 < trainer.max_steps <= trainer.global_step and _validation_enabled(trainer):
            trainer.should_stop = True  # the loop validates before it stops, once, interval or not

    # Lightning logs a validation's metrics (after the epoch-end hooks, before `on_validation_end`) under
    # the training loop's count of logged batches, which trails global_step by one after an update; the
    # count is set to global_step for that moment and put back before anything else reads it
    # (checkpoint callbacks run after this one).
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            loop = trainer.fit_loop.epoch_loop
            self._logged_batches = loop._batches_that_stepped
            loop._batches_that_stepped = trainer.global_step

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._logged_batches is not None:
            trainer.fit_loop.epoch_loop._batches_that_stepped = self._logged_batches
            self._logged_batches = None


def _validation_enabled(trainer) -> bool:
    """The fit validates at all (the validation loop itself skips when there is no validation data)."""
    return trainer.limit_val_batches != 0 and is_overridden("validation_step", trainer.lightning_module)


def is_start_validation(trainer) -> bool:
    """Whether the validation running now is the one that opens a fit (step 0, or a resumed fit's
    checkpoint step): a baseline that monitors may record without judging."""
    return any(getattr(callback, "validating_at_start", False) for callback in trainer.callbacks)
