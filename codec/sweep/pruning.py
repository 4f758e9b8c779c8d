"""Pruning inside a trial: Optuna's pruner on the validation objective, and at once on the diagnostics.

optuna-integration's `PyTorchLightningPruningCallback` reports at `current_epoch`; our validation
is step-based (`val_check_interval` in steps, one long epoch), so this subclass reports at
`trainer.global_step`. A trial is also pruned the moment a monitor reaches a sustained verdict
(the amplitude rules of `codec.diagnostics`: collapse, explosion, DC offset, divergence; any
callback with a `stop_verdict`), or when the training loss or a parameter turns non-finite
(checked on logging steps: a per-step check would sync the device every step). Instead of raising
inside Lightning it stops the trainer and keeps the reason, so the run directory is closed
normally (metrics.csv, summary.json) and the objective raises `optuna.TrialPruned` after `fit`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
from optuna_integration import PyTorchLightningPruningCallback


class TrialPruning(PyTorchLightningPruningCallback):
    def __init__(self, trial, monitor: str):
        super().__init__(trial, monitor)
        self.reason: str | None = None

    # ------------------------------------------------------------ the pruner, fed at global steps
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.global_step == 0 or self.stop_if_flagged(trainer):
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            warnings.warn(f"the objective {self.monitor!r} was not logged at validation; cannot prune",
                          stacklevel=2)
            return
        value, step = float(score), trainer.global_step
        if not math.isfinite(value):
            self._stop(trainer, f"{self.monitor} is {value} at step {step}")
            return
        self._trial.report(value, step=step)
        if self._trial.should_prune():
            self._stop(trainer, f"pruner stopped it at step {step} ({self.monitor} = {value:.4g})")

    # ------------------------------------------------------------ at once: the diagnostics and NaN
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.stop_if_flagged(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.reason or trainer.global_step % max(1, trainer.log_every_n_steps):
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
            self._stop(trainer, f"non-finite training loss ({float(loss)}) at step {trainer.global_step}")
            return
        # A step can turn the weights non-finite while its own loss was finite; the next forward
        # would then fail inside the model instead of being pruned.
        bad = next((n for n, p in pl_module.named_parameters() if not bool(torch.isfinite(p.sum()))), None)
        if bad is not None:
            self._stop(trainer, f"parameter {bad} is not finite after step {trainer.global_step}")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # The codec refuses non-finite tensors with an error that says so (ResidualVQ: "... is not
        # finite"): weights blown up by a step whose own loss was still finite. That is divergence,
        # so the trial is pruned, not failed; any other error fails the trial.
        if isinstance(exception, (ValueError, FloatingPointError)) and "not finite" in str(exception):
            self.reason = f"diverged at step {trainer.global_step}: {exception}"

    def stop_if_flagged(self, trainer) -> bool:
        if self.reason:
            return True
        # Duck-typed: any callback whose rules reached a sustained verdict (codec.callbacks' monitors).
        verdicts = [v for cb in trainer.callbacks if (v := getattr(cb, "stop_verdict", None)) is not None]
        if verdicts:
            first = min(verdicts, key=lambda v: v.step)
            self._stop(trainer, f"{first.failure} ({first.rule}) declared at step {first.step}: {first.message}")
        return bool(verdicts)

    def _stop(self, trainer, reason: str) -> None:
        self.reason = reason
        trainer.should_stop = True

    stop_if_collapsed = stop_if_flagged  # the name trial.py used before the diagnostics rules
