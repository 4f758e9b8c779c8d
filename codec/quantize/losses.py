"""The two VQ losses, written once so that their stop-gradients are never mistyped (F6).

commitment: mse(x, sg(q)) pulls the encoder output towards its codeword; its
gradient reaches the encoder and never the codebook.
codebook:   mse(sg(x), q) pulls the codeword towards the encoder output; used
only when the codebook learns by gradient (with EMA it has no gradient).

Both take an optional per-row weight (quantizer dropout: a row whose level is
dropped contributes nothing) and average over the rows that count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mse(a: torch.Tensor, b: torch.Tensor, row_weight: torch.Tensor | None) -> torch.Tensor:
    if row_weight is None:
        return F.mse_loss(a, b)  # one fused kernel each way: this runs once per level per step
    err = (a - b).pow(2).mean(dim=-1)  # (N,)
    return (err * row_weight).sum() / row_weight.sum().clamp_min(1.0)


def commitment_loss(x: torch.Tensor, q: torch.Tensor, row_weight: torch.Tensor | None = None) -> torch.Tensor:
    return _masked_mse(x, q.detach(), row_weight)


def codebook_loss(x: torch.Tensor, q: torch.Tensor, row_weight: torch.Tensor | None = None) -> torch.Tensor:
    return _masked_mse(x.detach(), q, row_weight)
