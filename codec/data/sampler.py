"""A shuffling sampler whose order is a function of (seed, epoch) and that resumes mid-epoch.

torch's RandomSampler draws its order from the global RNG (or a generator it never saves), so a
run resumed from a checkpoint sees other batches than the run it continues. This sampler's epoch
order is `randperm(n)` of a generator seeded with (seed, epoch); Lightning tells it the epoch
(`set_epoch`), and `resume(epoch, consumed)` makes the next pass over that epoch skip the items
already trained on. With `draws=True` it yields `(index, draw)` pairs, `draw` a number unique to
the item's position in the whole run, from which a data set seeds whatever it draws for that item
(a random crop), so crops too are the same after a resume and in any DataLoader worker.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    def __init__(self, length: int, seed: int = 0, draws: bool = False):
        self.length = length
        self.seed = seed
        self.draws = draws
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, items already consumed in it)

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, consumed: int) -> None:
        """The next pass over `epoch` starts after its first `consumed` items."""
        self.epoch = epoch
        self._skip = (epoch, consumed)

    def __iter__(self) -> Iterator:
        epoch = self.epoch
        start = 0
        if self._skip is not None:
            skip_epoch, consumed = self._skip
            self._skip = None
            if skip_epoch == epoch:
                start = consumed
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        for position in range(start, self.length):
            index = order[position]
            yield (index, epoch * self.length + position) if self.draws else index
