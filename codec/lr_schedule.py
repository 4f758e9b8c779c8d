"""Learning-rate schedule of the shared recipe: a linear warm-up, then DAC's exponential decay per step.

Used through LightningCLI's own `lr_scheduler:` key (conf/defaults.yaml); `CodecModule` steps it
after every optimizer step (Lightning's default interval for a CLI scheduler is the epoch).
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupExponentialLR(LRScheduler):
    """lr(step) = base_lr * min(1, (step + 1) / warmup_steps) * gamma ** step.

    Args:
        optimizer: the optimizer whose learning rates it sets.
        warmup_steps: steps of the linear ramp from base_lr / warmup_steps to base_lr
            (SoundStream-style warm-up); 0: none.
        gamma: decay factor per step (DAC: 0.999996, i.e. -1.2 % over 3000 steps, -63 % over 250k).
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 0, gamma: float = 1.0, last_epoch: int = -1):
        if warmup_steps < 0:
            raise ValueError(f"WarmupExponentialLR.warmup_steps must be >= 0, got {warmup_steps}")
        if not 0 < gamma <= 1:
            raise ValueError(f"WarmupExponentialLR.gamma must be in (0, 1], got {gamma}")
        self.warmup_steps = warmup_steps
        self.gamma = gamma
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        return warm * self.gamma ** max(step, 0)

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
