"""What happens to the latent before and after the residual stack (F5): one object per variant.

A normalizer owns everything its variant changes, so the stack asks it instead of testing names:

- `transform(z)`: what the stack quantizes, and the side information a decoder needs (or None);
- `anchor(z, normalized)`: the tensor the straight-through passes the output's gradient to;
- `restore(q, side)`: the stack's output back in the space the caller expects;
- `metric`: how each level compares inputs with codewords;
- `side_info_bits_per_item`: bits sent per item besides the codes.

The variants, by the names configs use:

- "none":      SoundStream; the stack sees the encoder output as it is (Euclidean lookup).
- "zscore":    StreamVC; every frame is standardised over channels. The stack and its output live
               in the standardised space (nothing is restored; the straight-through goes to it).
- "l2":        DAC's *cosine lookup*: nothing happens at the stack level; each level compares
               L2-normalised (projected) inputs with L2-normalised codewords. The emitted codeword
               and the losses stay unnormalised, as in DAC. The name is the one users know.
- "rms_scale": EnCodec's `normalize`; every item is divided by its RMS scale and the scale is
               multiplied back on the way out. The scale (float32, 32 bits per item) is side
               information that `decode` needs next to the codes.
"""

from __future__ import annotations

import torch


def zscore(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standardise each frame of z (B, C, T) over its C channels."""
    mean = z.mean(dim=1, keepdim=True)
    var = z.var(dim=1, keepdim=True, unbiased=False)
    return (z - mean) * torch.rsqrt(var + eps)


def rms_scale(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-item RMS over channels and time, shape (B, 1, 1), never below sqrt(eps)."""
    return z.pow(2).mean(dim=(1, 2), keepdim=True).add(eps).sqrt()


class Normalizer:
    """The "none" variant, and the interface every variant implements."""

    name = "none"
    metric = "euclidean"
    side_info_bits_per_item = 0

    def transform(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return z, None

    def anchor(self, z: torch.Tensor, normalized: torch.Tensor) -> torch.Tensor:
        return z

    def restore(self, q: torch.Tensor, side: torch.Tensor | None) -> torch.Tensor:
        return q

    def check_side(self, side: torch.Tensor | None) -> None:
        """Raise when `decode` lacks side information this variant needs."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class ZScore(Normalizer):
    name = "zscore"

    def transform(self, z):
        return zscore(z), None

    def anchor(self, z, normalized):
        return normalized


class CosineLookup(Normalizer):
    name = "l2"
    metric = "cosine"


class RMSScale(Normalizer):
    name = "rms_scale"
    side_info_bits_per_item = 32  # one float32 scale per item

    def transform(self, z):
        scale = rms_scale(z)
        return z / scale, scale

    def restore(self, q, side):
        return q if side is None else q * side

    def check_side(self, side):
        if side is None:
            raise ValueError('normalization="rms_scale" needs the per-item scale returned by encode()')


NORMALIZERS: dict[str, Normalizer] = {n.name: n for n in (Normalizer(), ZScore(), CosineLookup(), RMSScale())}
NORMALIZATIONS = tuple(NORMALIZERS)


def normalizer_for(name: str) -> Normalizer:
    if name not in NORMALIZERS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {name!r}")
    return NORMALIZERS[name]
