"""Find the project's quantizers in any LightningModule, by type (F7 came from a classifier, not a codec)."""

from __future__ import annotations

from torch import nn

from codec.quantize import ResidualVQ


def find_quantizers(module: nn.Module) -> list[tuple[str, ResidualVQ]]:
    """(qualified name, quantizer) for every ResidualVQ inside `module`."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, ResidualVQ)]
