"""Nearest-codeword search, chunked so memory stays bounded on long inputs, always in float32.

The distance matrix of N inputs against K codewords is never materialised in
full: rows are processed `chunk_rows` at a time, so the extra memory is
`chunk_rows * K` floats whatever the sequence length. Each chunk is one GEMM
with the codeword norms fused in as its bias (`addmm`) and one argmin: torch has
no fused matmul-argmin, so that is the fewest kernels it allows (torch.compile,
`ResidualVQ(compile=True)`, may do better on a GPU).

The stack prepares the tables of all its levels at once (`prepare`, one kernel
for every level's norms), so a level's search launches only the GEMM and argmin.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

METRICS = ("euclidean", "cosine")

# 2**22 floats (16 MiB) of distances per chunk: big enough that the matmul
# runs at full speed, small enough that T=2000 or T=200000 costs the same.
DEFAULT_CHUNK_ELEMENTS = 2**22


def chunk_rows_for(codebook_size: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Rows per distance chunk so that one chunk holds about `chunk_elements` floats."""
    return max(1, chunk_elements // max(1, codebook_size))


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off: distances, argmins and EMA statistics in bf16 pick wrong codes and drift."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def prepare(books: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(keys (..., D, K), bias (..., K) or None) of codebooks (..., K, D), so that the best code of a
    row x is argmin(bias + alpha * x @ keys): alpha = -2 and bias = ||c||^2 for "euclidean" (||x||^2
    is the same for every code), alpha = 1 and keys = -normalised codewords for "cosine"."""
    books = books.detach().float()
    if check_metric(metric) == "cosine":
        return F.normalize(books, dim=-1).neg().transpose(-1, -2), None
    return books.transpose(-1, -2), (books * books).sum(dim=-1)


def search(x: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor | None, chunk_rows: int | None = None) -> torch.Tensor:
    """Best code (int64, (N,)) of each row of x (N, D) in one level's prepared table."""
    x = x.detach().float()
    if bias is None:
        x = F.normalize(x, dim=-1)
    n = x.shape[0]
    chunk_rows = chunk_rows or chunk_rows_for(keys.shape[-1])
    if n <= chunk_rows:
        return _scores(x, keys, bias).argmin(dim=1)
    codes = torch.empty(n, dtype=torch.long, device=x.device)
    for start in range(0, n, chunk_rows):
        torch.argmin(_scores(x[start : start + chunk_rows], keys, bias), dim=1,
                     out=codes[start : start + chunk_rows])
    return codes


def _scores(rows: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is None:
        return rows @ keys  # -cosine similarity
    return torch.addmm(bias, rows, keys, beta=1.0, alpha=-2.0)


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
    with full_precision(x.device):
        keys, bias = prepare(codebook, metric)
        return search(x, keys, bias, chunk_rows)
