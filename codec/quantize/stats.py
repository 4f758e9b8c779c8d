"""Code-usage statistics: perplexity, utilisation, and the per-level snapshot callbacks read."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def usage_entropy_bits(histogram: torch.Tensor) -> float:
    """Entropy in bits of the empirical code distribution (0 for an empty histogram)."""
    counts = histogram.double()
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * p.log2()).sum())


def perplexity(histogram: torch.Tensor) -> float:
    """2 ** entropy: the number of equally used codes with the same entropy (1 = one code)."""
    return float(2.0 ** usage_entropy_bits(histogram))


def codebook_utilization(histograms: list[torch.Tensor], codebook_size: int) -> float:
    """DAC's effective utilisation (`scripts/compute_entropy.py`), in percent:
    sum over levels of usage entropy in bits / (log2(codebook_size) * levels)."""
    if not histograms:
        return 0.0
    entropy = sum(usage_entropy_bits(h) for h in histograms)
    return 100.0 * entropy / (math.log2(codebook_size) * len(histograms))


def distance_from_init(codebook: torch.Tensor, initial_codebook: torch.Tensor) -> float:
    """Mean codeword distance from the initial codebook, relative to the larger of the two mean
    codeword norms: 0 untouched, about 1 moved by its own size, at most 2; a level whose residual
    inputs started at zero does not divide by zero."""
    book, init = codebook.detach().float(), initial_codebook.detach().float()
    scale = torch.maximum(init.norm(dim=1).mean(), book.norm(dim=1).mean()).clamp_min(1e-12)
    return float((book - init).norm(dim=1).mean() / scale)


@dataclass
class LevelStats:
    """What one level looked like after the last forward, plus its long-run state."""

    level: int
    active: bool
    initialized: bool
    histogram: torch.Tensor  # (K,) codes chosen in the last forward (rows that used this level)
    perplexity: float
    codes_used: int  # distinct codes in the last forward
    ema_usage: torch.Tensor  # (K,) EMA of assignments per step (cluster_size)
    dead_codes: int  # codes whose EMA usage is below the dead-code threshold
    norm_mean: float  # statistics of the codeword L2 norms
    norm_std: float
    norm_min: float
    norm_max: float
    value_std: float  # statistics of the raw codebook values (the reports' "std=1.51, min=-72")
    value_min: float
    value_max: float
    distance_from_init: float  # mean ||c - c_init|| / max(mean ||c_init||, mean ||c||)
    trained_steps: int  # training forwards in which this level was active
    input_scale: float = 0.0  # EMA of the largest |input value| per training step; 0: never measured
    rejected_updates: int = 0  # code updates refused as non-finite since the start

    def scalars(self) -> dict[str, float]:
        """The scalar fields, for loggers."""
        return {
            "perplexity": self.perplexity,
            "codes_used": float(self.codes_used),
            "dead_codes": float(self.dead_codes),
            "norm_mean": self.norm_mean,
            "norm_std": self.norm_std,
            "norm_min": self.norm_min,
            "norm_max": self.norm_max,
            "value_std": self.value_std,
            "value_min": self.value_min,
            "value_max": self.value_max,
            "distance_from_init": self.distance_from_init,
            "input_scale": self.input_scale,
            "rejected_updates": float(self.rejected_updates),
        }
