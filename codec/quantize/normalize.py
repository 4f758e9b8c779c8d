"""What happens to the latent before and after the residual stack (F5).

- "none":      SoundStream; the stack sees the encoder output as it is.
- "zscore":    StreamVC; every frame is standardised over channels. The stack
               and its output live in the standardised space (nothing is restored).
- "l2":        DAC; nothing happens at the stack level: each level compares
               L2-normalised inputs and codewords (cosine lookup), see Codebook.
- "rms_scale": EnCodec's `normalize`; every item is divided by its RMS scale and
               the scale is multiplied back on the way out. The scale is side
               information that a decoder needs next to the codes.
"""

from __future__ import annotations

import torch

NORMALIZATIONS = ("none", "zscore", "l2", "rms_scale")


def zscore(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standardise each frame of z (B, C, T) over its C channels."""
    mean = z.mean(dim=1, keepdim=True)
    var = z.var(dim=1, keepdim=True, unbiased=False)
    return (z - mean) * torch.rsqrt(var + eps)


def rms_scale(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-item RMS over channels and time, shape (B, 1, 1), never below sqrt(eps)."""
    return z.pow(2).mean(dim=(1, 2), keepdim=True).add(eps).sqrt()


def lookup_metric(normalization: str) -> str:
    return "cosine" if normalization == "l2" else "euclidean"


def check_normalization(normalization: str) -> str:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    return normalization


def normalize_input(z: torch.Tensor, normalization: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(what the stack quantizes, the per-item scale for rms_scale or None)."""
    if normalization == "zscore":
        return zscore(z), None
    if normalization == "rms_scale":
        scale = rms_scale(z)
        return z / scale, scale
    return z, None


def restore_output(q: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return q if scale is None else q * scale
