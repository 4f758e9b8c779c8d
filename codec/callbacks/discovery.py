"""Find the project's quantizers in any LightningModule, by type (F7 came from a classifier, not a codec)."""

from __future__ import annotations

from torch import nn

from codec.quantize import ResidualVQ


def find_quantizers(module: nn.Module) -> list[tuple[str, ResidualVQ]]:
    """(qualified name, quantizer) for every ResidualVQ inside `module`."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, ResidualVQ)]


def active_levels(rvq: ResidualVQ) -> int:
    """The levels a quantizer uses now, as a Python int (the `num_active` buffer may live on a GPU,
    where reading it every step would be a host sync; the quantizer keeps a host copy when it can)."""
    cached = getattr(rvq, "active_levels", None)
    return int(cached) if cached is not None else int(rvq.num_active)
