"""Quantizer dropout (SoundStream / DAC): train the stack to work at every bitrate."""

from __future__ import annotations

import torch


def sample_levels_per_item(
    batch: int, num_levels: int, p: float, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Levels each item uses: `num_levels`, or with probability p a uniform draw from [1, num_levels].

    Which items drop is sampled independently per item (DAC always drops the
    first `p * batch` items of the batch: dac #40).
    """
    levels = torch.full((batch,), num_levels, dtype=torch.long, device=device)
    if p <= 0 or num_levels <= 1:
        return levels
    drop = torch.rand(batch, device=device, generator=generator) < p
    draws = torch.randint(1, num_levels + 1, (batch,), device=device, generator=generator)
    return torch.where(drop, draws, levels)
