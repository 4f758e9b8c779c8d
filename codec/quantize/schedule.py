"""Progressive RVQ (F1): how many levels are active at a training step."""

from __future__ import annotations

from dataclasses import dataclass


def progressive_num_active(step: int, start: int, every: int, maximum: int, initial: int = 1) -> int:
    """Levels active at `step`: `initial` until `start`, then one more every `every` steps.

    The reports' rule `min(step // every + 1, N)` is start=0, initial=1. Step 4000
    with every=2000 gives 3.
    """
    if every <= 0:
        raise ValueError(f"every must be positive, got {every}")
    if not 1 <= initial <= maximum:
        raise ValueError(f"initial must be in [1, {maximum}], got {initial}")
    if step < start:
        return initial
    return min(initial + (step - start) // every, maximum)


@dataclass(frozen=True)
class ProgressiveSchedule:
    """The progressive rule with its settings, as the `ProgressiveRVQ` callback stores them in a
    checkpoint; readable without Lightning (`codec inspect`)."""

    every: int = 2000
    start: int = 0
    initial: int = 1
    maximum: int | None = None

    def num_active_at(self, step: int, num_quantizers: int) -> int:
        cap = min(self.maximum or num_quantizers, num_quantizers)
        return progressive_num_active(step, self.start, self.every, cap, min(self.initial, cap))
