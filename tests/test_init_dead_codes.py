"""F8: data-driven init and dead-code replacement measurably raise codebook usage."""

import torch

from codec.quantize import ResidualVQ
from codec.quantize.stats import perplexity

from helpers import as_frames, clustered

OFFSET = 3.0


def held_out_perplexity(init: str, dead_code_threshold: float, steps: int = 30) -> float:
    torch.manual_seed(1)
    points, _, _ = clustered(32, 16, per_cluster=40, spread=0.2, scale=4.0, seed=3)
    points = points + OFFSET  # data away from the origin, as encoder outputs usually are
    rvq = ResidualVQ(dim=16, num_quantizers=1, codebook_size=32, init=init,
                     dead_code_threshold=dead_code_threshold, decay=0.9).train()
    for _ in range(steps):
        rvq(as_frames(points[torch.randperm(len(points))][:512], batch=8))
    test_points, _, _ = clustered(32, 16, per_cluster=20, spread=0.2, scale=4.0, seed=3)
    rvq.eval()
    codes, _ = rvq.encode(as_frames(test_points + OFFSET, batch=1))
    return perplexity(torch.bincount(codes.flatten(), minlength=32))


def test_kmeans_init_and_dead_code_replacement_raise_perplexity_over_random_init():
    random_only = held_out_perplexity("random", 0.0)
    kmeans = held_out_perplexity("kmeans", 0.0)
    random_with_replacement = held_out_perplexity("random", 2.0)
    # 32 equally likely clusters: the ideal perplexity is 32.
    assert kmeans > 1.5 * random_only, (kmeans, random_only)
    assert random_with_replacement > 1.5 * random_only, (random_with_replacement, random_only)
    assert kmeans > 20
