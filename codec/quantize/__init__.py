"""Residual vector quantization with interchangeable variants (see README, "Quantizer")."""

from codec.quantize.codebook import Codebook
from codec.quantize.normalize import NORMALIZATIONS
from codec.quantize.residual import ResidualVQ, RVQOutput, frozen_codebooks
from codec.quantize.schedule import progressive_num_active
from codec.quantize.stats import LevelStats, codebook_utilization, perplexity

__all__ = [
    "NORMALIZATIONS",
    "Codebook",
    "LevelStats",
    "RVQOutput",
    "ResidualVQ",
    "codebook_utilization",
    "frozen_codebooks",
    "perplexity",
    "progressive_num_active",
]
