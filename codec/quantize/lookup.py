"""Nearest-codeword search, chunked so memory stays bounded on long inputs.

The distance matrix of N inputs against K codewords is never materialised in
full: rows are processed `chunk_rows` at a time, so the extra memory is
`chunk_rows * K` floats whatever the sequence length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

METRICS = ("euclidean", "cosine")

# 2**22 floats (16 MiB) of distances per chunk: big enough that the matmul
# runs at full speed, small enough that T=2000 or T=200000 costs the same.
DEFAULT_CHUNK_ELEMENTS = 2**22


def chunk_rows_for(codebook_size: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Rows per distance chunk so that one chunk holds about `chunk_elements` floats."""
    return max(1, chunk_elements // max(1, codebook_size))


def nearest_codes(
    x: torch.Tensor,
    codebook: torch.Tensor,
    metric: str = "euclidean",
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Index of the nearest codeword for every row of `x`.

    x: (N, D), codebook: (K, D). Returns int64 (N,).
    euclidean: argmin ||x - c||^2 = argmin (||c||^2 - 2 x.c); ||x||^2 is constant per row.
    cosine: argmax of x.c after L2-normalising both sides (DAC's factorised lookup).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    n = x.shape[0]
    chunk_rows = chunk_rows or chunk_rows_for(codebook.shape[0])
    if metric == "cosine":
        x = F.normalize(x, dim=-1)
        codebook = F.normalize(codebook, dim=-1)
        neg_sim = -codebook.t()
        bias = None
    else:
        neg_sim = codebook.t()
        bias = codebook.pow(2).sum(dim=1)  # (K,)
    codes = torch.empty(n, dtype=torch.long, device=x.device)
    for start in range(0, n, chunk_rows):
        rows = x[start : start + chunk_rows]
        if bias is None:
            scores = rows @ neg_sim  # -cosine similarity
        else:
            scores = torch.addmm(bias, rows, neg_sim, beta=1.0, alpha=-2.0)
        torch.argmin(scores, dim=1, out=codes[start : start + chunk_rows])
    return codes
