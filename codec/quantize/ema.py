"""Exponential-moving-average codebook update (EnCodec / VQ-VAE-2 style), as pure functions.

The codebook moves to the running mean of the *encoder outputs* assigned to
each code (F6: averaging the quantized vectors instead would never move it).
Counts use Laplace smoothing so a code with no recent assignment does not
divide by zero.
"""

from __future__ import annotations

import torch

SCATTER_MIN_ELEMENTS = 2**16  # rows x dim from which scatter_add_ beats index_put_ (bench/quantizer.py)


def laplace_smoothed(counts: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Counts with `eps` added to every code, rescaled to keep the same total."""
    total = counts.sum()
    return (counts + eps) / (total + counts.numel() * eps) * total


def assignment_sums(inputs: torch.Tensor, codes: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-code count and sum of the assigned input rows. inputs (N, D), codes (N,)."""
    counts = torch.bincount(codes, minlength=codebook_size).to(inputs.dtype)
    sums = torch.zeros(codebook_size, inputs.shape[1], dtype=inputs.dtype, device=inputs.device)
    if inputs.numel() >= SCATTER_MIN_ELEMENTS:
        # Large batches: scatter_add_ is 7-8x faster than index_put_(accumulate) on CPU
        # (3200 x 128 rows: 0.15 vs 1.0 ms; 32000 x 128: 1.2 vs 9.8 ms).
        sums.scatter_add_(0, codes.unsqueeze(1).expand(-1, inputs.shape[1]), inputs)
    else:
        # Small batches (a codec's 8 x 25 frames): index_put_ stays ~0.02 ms where scatter_add_ and
        # index_add_ took 0.1-80 ms on a 2-core machine whose other core was busy (spin-waiting).
        sums.index_put_((codes,), inputs, accumulate=True)
    return counts, sums


@torch.no_grad()
def ema_update_(
    codebook: torch.Tensor,
    cluster_size: torch.Tensor,
    embed_sum: torch.Tensor,
    inputs: torch.Tensor,
    codes: torch.Tensor,
    decay: float,
    eps: float = 1e-5,
) -> torch.Tensor:
    """One EMA step, in place on the three state tensors. Returns this batch's counts.

    cluster_size <- decay * cluster_size + (1 - decay) * counts
    embed_sum    <- decay * embed_sum    + (1 - decay) * sum of assigned inputs
    codebook     <- embed_sum / laplace_smoothed(cluster_size)
    """
    counts, sums = assignment_sums(inputs, codes, codebook.shape[0])
    cluster_size.lerp_(counts, 1.0 - decay)
    embed_sum.lerp_(sums, 1.0 - decay)
    codebook.copy_(embed_sum / laplace_smoothed(cluster_size, eps).unsqueeze(1))
    return counts
