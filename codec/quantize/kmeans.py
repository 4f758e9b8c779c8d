"""K-means on one batch of vectors, used to initialise a codebook from data (F8).

It runs once per level, at its first training step, so it may read values back to the host (its
sample sizes depend on the data); the steps after it never do.
"""

from __future__ import annotations

import torch

from codec.quantize.lookup import nearest_codes


def sample_rows(samples: torch.Tensor, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`num` rows of `samples`, without replacement when there are enough rows."""
    n = samples.shape[0]
    if n >= num:
        idx = torch.randperm(n, device=samples.device, generator=generator)[:num]
    else:
        idx = torch.randint(0, n, (num,), device=samples.device, generator=generator)
    return samples[idx]


def kmeans(
    samples: torch.Tensor,
    num_clusters: int,
    iters: int = 10,
    metric: str = "euclidean",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means. Returns (means (K, D), counts (K,)) of the final assignment.

    A cluster that ends up empty keeps its previous centre (a sampled input), so
    every codeword stays on the data's scale; so does one whose mean overflows (inputs near the
    float32 limit), so every codeword stays finite.
    """
    samples = samples.float()
    means = sample_rows(samples, num_clusters, generator).clone()
    counts = torch.zeros(num_clusters, device=samples.device)
    for _ in range(max(1, iters)):
        codes = nearest_codes(samples, means, metric)
        counts = torch.bincount(codes, minlength=num_clusters).to(samples.dtype)
        sums = torch.zeros_like(means).index_add_(0, codes, samples)
        updated = sums / counts.clamp_min(1.0)[:, None]
        keep = (counts == 0) | ~torch.isfinite((updated * updated).sum(dim=1))
        means = torch.where(keep[:, None], means, updated)
    return means, counts
