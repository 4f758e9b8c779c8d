"""Progressive RVQ (F1): how many levels are active at a training step."""

from __future__ import annotations


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
