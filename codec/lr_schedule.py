"""Learning-rate schedule of the shared recipe: a linear warm-up, DAC's exponential decay per step,
and a linear cool-down to zero over the last part of the run.

Used through LightningCLI's own `lr_scheduler:` key (conf/defaults.yaml); `CodecModule` steps it
after every optimizer step (Lightning's default interval for a CLI scheduler is the epoch) and
tells it the run's length (`trainer.max_steps`) when the cool-down needs it.

Why the cool-down: DAC's decay is for 250k+ steps; over a 3000-step run it moves the rate by 1 %,
so the codec ends at full rate and its last validation is a sample from a noisy walk (measured:
phase_1's mel distance 0.68, 0.75, 0.57 at steps 2500, 2750, 3000; waveform_l1's SNR 7.3 then
5.8 dB). Ablations are compared at their last step, so the recipe anneals into it, as the
warmup-stable-decay schedules do (Hägele et al. 2024); every step before the cool-down is as before.
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupExponentialLR(LRScheduler):
    """lr(step) = base_lr * min(1, (step + 1) / warmup_steps) * gamma ** step * cooldown(step).

    cooldown(step) is 1 until the last `cooldown_fraction * total_steps` steps, then falls linearly
    towards 0 at `total_steps`.

    Args:
        optimizer: the optimizer whose learning rates it sets.
        warmup_steps: steps of the linear ramp from base_lr / warmup_steps to base_lr
            (SoundStream-style warm-up); 0: none.
        gamma: decay factor per step (DAC: 0.999996, i.e. -1.2 % over 3000 steps, -63 % over 250k).
        cooldown_fraction: share of the run, in [0, 1), over which the rate falls to 0; 0: none.
        total_steps: the run's length in steps; None: `trainer.max_steps`, filled in by
            CodecModule. It is not saved with the schedule's state, so a run resumed with a larger
            max_steps cools down at its new end.
        step_offset: the run's step at this schedule's step 0, for an optimizer that starts late
            (the discriminator, after its warm-up): the cool-down ends at the run's last step.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 0, gamma: float = 1.0,
                 cooldown_fraction: float = 0.0, total_steps: int | None = None, step_offset: int = 0,
                 last_epoch: int = -1):
        if warmup_steps < 0:
            raise ValueError(f"WarmupExponentialLR.warmup_steps must be >= 0, got {warmup_steps}")
        if not 0 < gamma <= 1:
            raise ValueError(f"WarmupExponentialLR.gamma must be in (0, 1], got {gamma}")
        if not 0 <= cooldown_fraction < 1:
            raise ValueError(f"WarmupExponentialLR.cooldown_fraction must be in [0, 1), got {cooldown_fraction}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"WarmupExponentialLR.total_steps must be >= 1, got {total_steps}")
        self.warmup_steps = warmup_steps
        self.gamma = gamma
        self.cooldown_fraction = cooldown_fraction
        self.total_steps = total_steps
        self.step_offset = step_offset
        super().__init__(optimizer, last_epoch)

    @property
    def needs_total_steps(self) -> bool:
        return self.cooldown_fraction > 0 and self.total_steps is None

    def factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return warm * self.gamma ** max(step, 0) * self._cooldown(step + self.step_offset)

    def _cooldown(self, run_step: int) -> float:
        if self.cooldown_fraction == 0 or self.total_steps is None:
            return 1.0
        length = max(1, round(self.cooldown_fraction * self.total_steps))
        return min(1.0, max(0.0, (self.total_steps - run_step) / length))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    def set_total_steps(self, total_steps: int) -> None:
        """The run's length (from the trainer); the current rates are recomputed with it."""
        if total_steps < 1:
            raise ValueError("lr_scheduler.init_args.cooldown_fraction needs the run's length: set "
                             f"trainer.max_steps or lr_scheduler.init_args.total_steps (got {total_steps})")
        self.total_steps = total_steps
        self.apply_current_rate()

    def apply_current_rate(self) -> None:
        """Set the optimizer's rates to this schedule's at its current step."""
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        # The run's length belongs to this run's trainer, not to the checkpoint (see total_steps).
        state = super().state_dict()
        state.pop("total_steps", None)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning restores the optimizer first: its rate is the one the checkpoint's run length
        # gave (0 at the end of a finished run), which would drive the first resumed step.
        super().load_state_dict(state_dict)
        self.apply_current_rate()
