"""Residual vector quantization: a stack of Codebook levels, each quantizing what the previous left.

Data flow (channels first, like DAC and EnCodec):

    z (B, dim, T) -> normalize_input -> rows (B*T, dim)
      level i: x_i = in_proj(r_i); q_i = nearest codeword; out_i = out_proj(sg(q_i))
               r_{i+1} = r_i - sg(out_i)     # residual keeps an identity path to z
    Q = sum_i mask_i * (post_scale_i * out_i + post_bias_i)
    quantized = anchor - sg(anchor) + restore(Q)   # straight-through, exactly once

Because the residual subtracts a *detached* output, every level's commitment
loss reaches the encoder (EnCodec subtracts the straight-through output, so
levels after the first get no commitment gradient: encodec #25), and because
the straight-through is applied once to the whole stack, d quantized / d z is
the identity at any depth (summing per-level straight-through outputs, as
vector-quantize-pytorch does, multiplies it by the number of levels).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from codec.quantize.codebook import INITS, UPDATES, Codebook
from codec.quantize.dropout import sample_levels_per_item
from codec.quantize.normalize import (
    NORMALIZATIONS,
    check_normalization,
    lookup_metric,
    normalize_input,
    restore_output,
)
from codec.quantize.stats import LevelStats, codebook_utilization

LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class RVQOutput:
    quantized: torch.Tensor  # (B, dim, T), straight-through to z (to the z-scored z for "zscore")
    codes: torch.Tensor  # (B, levels, T) int64
    losses: dict[str, torch.Tensor]  # "commit" (weighted), and "codebook" when update="gradient"
    scale: torch.Tensor | None = None  # (B, 1, 1) side information for "rms_scale"
    levels_per_item: torch.Tensor | None = None  # (B,) levels each item used (quantizer dropout)
    commit_per_level: torch.Tensor | None = None  # (levels,) unweighted; detach before logging


class ResidualVQ(nn.Module):
    """Residual VQ whose variants are chosen by arguments, so an ablation is a config change.

    Args:
        dim: channels of the input z (B, dim, T).
        num_quantizers: levels in the stack.
        codebook_size: codes per level.
        codebook_dim: if set, each level projects to this size for the lookup (DAC's factorised codes).
        normalization: "none" | "zscore" | "l2" | "rms_scale" (see codec.quantize.normalize).
        update: "ema" (codebook is a buffer moved by EMA) | "gradient" (codebook loss trains it).
        commitment_weight: weight of the summed commitment losses in `losses["commit"]`.
        decay: EMA decay of codewords and usage counts.
        init: "kmeans" (from the first training batch) | "random" (standard normal).
        dead_code_threshold: codes whose EMA usage (assignments per step) falls below it are
            moved onto recent inputs; 0 disables replacement.
        quantizer_dropout: probability that a training item uses a random number of levels.
        post_scale: learnable per-level, per-channel scale and bias on each level's output
            (the reports' Phase A structure).
        kmeans_iters: Lloyd iterations of the k-means init.
        chunk_rows: rows per distance chunk (default: about 4M distances per chunk).
        check_finite: reject NaN/inf input with a clear error (one pass over z).
    """

    def __init__(
        self,
        dim: int,
        num_quantizers: int = 8,
        codebook_size: int = 1024,
        codebook_dim: int | None = None,
        normalization: str = "none",
        update: str = "ema",
        commitment_weight: float = 0.25,
        decay: float = 0.99,
        init: str = "kmeans",
        dead_code_threshold: float = 2.0,
        quantizer_dropout: float = 0.0,
        post_scale: bool = False,
        kmeans_iters: int = 10,
        chunk_rows: int | None = None,
        check_finite: bool = True,
    ):
        super().__init__()
        _check_options(
            dim, num_quantizers, codebook_size, codebook_dim, normalization, update, init,
            commitment_weight, decay, dead_code_threshold, quantizer_dropout,
        )
        self.dim = dim
        self.num_quantizers = num_quantizers
        self.codebook_size = codebook_size
        self.normalization = normalization
        self.update = update
        self.commitment_weight = commitment_weight
        self.quantizer_dropout = quantizer_dropout
        self.check_finite = check_finite
        metric = lookup_metric(normalization)
        self.levels = nn.ModuleList(
            Codebook(
                dim, codebook_size, codebook_dim, metric=metric, update=update, decay=decay,
                init=init, kmeans_iters=kmeans_iters, dead_code_threshold=dead_code_threshold,
                chunk_rows=chunk_rows,
            )
            for _ in range(num_quantizers)
        )
        # A buffer, so every state_dict and checkpoint carries it (F1).
        self.register_buffer("num_active", torch.tensor(num_quantizers, dtype=torch.long))
        if post_scale:
            self.post_scale = nn.Parameter(torch.ones(num_quantizers, dim))
            self.post_bias = nn.Parameter(torch.zeros(num_quantizers, dim))
        else:
            self.post_scale = None
            self.post_bias = None

    # ------------------------------------------------------------------ state
    def set_num_active(self, n: int) -> None:
        n = int(n)
        if not 1 <= n <= self.num_quantizers:
            raise ValueError(f"num_active must be in [1, {self.num_quantizers}], got {n}")
        self.num_active.fill_(n)

    @property
    def side_info_bits_per_item(self) -> int:
        """Bits sent per item besides the codes: the float32 RMS scale for "rms_scale"."""
        return 32 if self.normalization == "rms_scale" else 0

    def bits_per_frame(self, num_levels: int | None = None) -> float:
        return (num_levels or int(self.num_active)) * math.log2(self.codebook_size)

    # ---------------------------------------------------------------- forward
    def forward(self, z: torch.Tensor, num_levels: int | None = None) -> RVQOutput:
        """Quantize z (B, dim, T) with `num_levels` levels (default: num_active)."""
        return self._run(z, num_levels, allow_dropout=True)

    @torch.no_grad()
    def encode(self, z: torch.Tensor, num_levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(codes (B, levels, T), scale or None) with no side effect in any mode."""
        with frozen_codebooks(self):
            out = self._run(z, num_levels, allow_dropout=False)
        return out.codes, out.scale

    def decode(self, codes: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """(B, dim, T) from codes (B, levels, T); `scale` is required for "rms_scale"."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be (batch, levels, frames), got shape {tuple(codes.shape)}")
        n = codes.shape[1]
        active = int(self.num_active)
        if not 1 <= n <= active:
            raise ValueError(
                f"codes have {n} levels but this model has {active} active levels "
                f"(of {self.num_quantizers}); levels beyond {active} were never trained for decoding"
            )
        if codes.dtype not in (torch.int64, torch.int32) or codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"codes must be integers in [0, {self.codebook_size}), got dtype {codes.dtype}, "
                             f"range [{int(codes.min())}, {int(codes.max())}]")
        if self.normalization == "rms_scale" and scale is None:
            raise ValueError('normalization="rms_scale" needs the per-item scale returned by encode()')
        b, _, t = codes.shape
        rows = rearrange(codes.long(), "b n t -> (b t) n")
        total = 0.0
        for i in range(n):
            total = total + self._post(i, self.levels[i].lookup(rows[:, i]))
        q = rearrange(total, "(b t) d -> b d t", b=b, t=t)
        return restore_output(q, scale)

    def _run(self, z: torch.Tensor, num_levels: int | None, allow_dropout: bool) -> RVQOutput:
        self._check_input(z)
        n = self._levels_to_use(num_levels)
        b, _, t = z.shape
        normalized, scale = normalize_input(z, self.normalization)
        anchor = normalized if self.normalization == "zscore" else z

        levels_per_item = torch.full((b,), n, dtype=torch.long, device=z.device)
        if allow_dropout and self.training and self.quantizer_dropout > 0:
            levels_per_item = sample_levels_per_item(b, n, self.quantizer_dropout, z.device)
        all_levels = bool((levels_per_item == n).all())

        residual = rearrange(normalized, "b d t -> (b t) d")
        if residual.dtype in LOW_PRECISION:
            residual = residual.float()
        if all_levels and self._plain_ema_stack():
            total, codes, commit_per_level, codebook_losses = self._plain_levels(residual, n)
        else:
            total, codes, commit_per_level, codebook_losses = self._levels(residual, n, levels_per_item, t, all_levels)

        q = rearrange(total, "(b t) d -> b d t", b=b, t=t).to(z.dtype)
        restored = restore_output(q, None if scale is None else scale.detach())
        quantized = _StraightThrough.apply(anchor, restored)
        losses = {"commit": self.commitment_weight * commit_per_level.sum()}
        if codebook_losses:
            losses["codebook"] = torch.stack(codebook_losses).sum()
        return RVQOutput(
            quantized=quantized,
            codes=rearrange(torch.stack(codes, dim=1), "(b t) n -> b n t", b=b, t=t),
            losses=losses,
            scale=scale,
            levels_per_item=levels_per_item,
            commit_per_level=commit_per_level,
        )

    def _levels(self, residual, n, levels_per_item, t, all_levels):
        """The general loop: projections, post_scale, dropout masks, gradient-trained codebooks."""
        total = 0.0
        codes, commits, codebook_losses = [], [], []
        for i in range(n):
            row_weight = None
            if not all_levels:
                row_weight = (levels_per_item > i).to(residual.dtype).repeat_interleave(t)
            level = self.levels[i](residual, row_weight)
            contribution = self._post(i, level.output)
            total = total + (contribution if row_weight is None else contribution * row_weight[:, None])
            residual = residual - level.output.detach()
            codes.append(level.codes)
            commits.append(level.commit)
            if level.codebook is not None:
                codebook_losses.append(level.codebook)
        return total, codes, torch.stack(commits), codebook_losses

    def _plain_ema_stack(self) -> bool:
        return self.update == "ema" and self.post_scale is None and not self.levels[0].projected

    def _plain_levels(self, residual, n):
        """Same result as `_levels` for EMA codebooks without projections, post_scale or dropout.

        The residual is updated in place without autograd, the sum of codewords is r_0 - r_n, and
        the commitment losses mean(r_{i+1}^2) get their gradient to r_0 in closed form: the general
        loop spends a quarter of the step on per-level autograd bookkeeping (bench/quantizer.py).
        Backward keeps only r_n, the codes and each level's codebook, so memory does not grow
        with the number of levels times the rows.
        """
        work = residual.detach().clone()
        codes, books, commits = [], [], []
        for level in self.levels[:n]:
            level_codes, q, book = level.assign_keeping_codebook(work)
            work.sub_(q)
            codes.append(level_codes)
            books.append(book)
            commits.append(torch.linalg.vector_norm(work).square())
        commits = _StackCommitment.apply(residual, torch.stack(commits) / work.numel(), work, codes, books)
        return residual.detach() - work, codes, commits, []
    def _post(self, level: int, output: torch.Tensor) -> torch.Tensor:
        if self.post_scale is None:
            return output
        return output * self.post_scale[level] + self.post_bias[level]

    def _levels_to_use(self, num_levels: int | None) -> int:
        active = int(self.num_active)
        if num_levels is None:
            return active
        if not 1 <= int(num_levels) <= active:
            raise ValueError(
                f"num_levels={num_levels} but this model has {active} active levels (of "
                f"{self.num_quantizers}); ask for at most {active}"
            )
        return int(num_levels)

    def _check_input(self, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor) or z.dim() != 3:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"ResidualVQ expects z of shape (batch, {self.dim}, frames), got {shape}")
        if z.shape[1] != self.dim:
            raise ValueError(
                f"ResidualVQ(dim={self.dim}) got z with {z.shape[1]} channels (shape {tuple(z.shape)}); "
                "input is channels-first (batch, dim, frames)"
            )
        if not z.is_floating_point():
            raise ValueError(f"ResidualVQ expects a floating-point z, got {z.dtype}")
        # One reduction catches NaN/inf (they propagate into the sum); only a non-finite sum,
        # which may also be a float overflow of finite values, pays for the exact check.
        if self.check_finite and not bool(torch.isfinite(z.sum())) and not bool(torch.isfinite(z).all()):
            n_nan = int(torch.isnan(z).sum())
            n_inf = int(torch.isinf(z).sum())
            raise ValueError(
                f"ResidualVQ input z contains {n_nan} NaN and {n_inf} inf values (shape {tuple(z.shape)}): "
                "the encoder output is not finite; nothing was quantized and no codebook was updated"
            )

    # ------------------------------------------------------------- statistics
    def level_stats(self) -> list[LevelStats]:
        """Per-level statistics after the last forward (histogram, perplexity, usage, norms)."""
        active = int(self.num_active)
        return [level.stats(i, i < active) for i, level in enumerate(self.levels)]

    def utilization(self, stats: list[LevelStats] | None = None) -> float:
        """DAC's effective codebook utilisation (%) over the active levels' last histograms.

        Pass the result of `level_stats()` when you have it, to not compute it twice."""
        stats = self.level_stats() if stats is None else stats
        return codebook_utilization([s.histogram for s in stats if s.active], self.codebook_size)


class _StackCommitment(torch.autograd.Function):
    """Per-level commitment losses of a projection-free stack, mean(r_{i+1}^2) (computed by the
    caller), with the gradient to the stack input r_0 in closed form: r_{i+1} = r_0 - sg(codewords
    of levels <= i), so d mean(r_{i+1}^2) / d r_0 = 2 r_{i+1} / numel. Equal to mse(x_i, sg(q_i)).

    Only the last residual r_n, the codes and each level's codebook are kept. With
    r_{i+1} = r_n + sum_{j>i} q_j, the gradient sum_i w_i r_{i+1} is W r_n + sum_{j>=1} c_j q_j,
    c_j = w_0 + ... + w_{j-1}: one embedding_bag over the codebooks scaled by c_j re-gathers and
    sums every level's codewords in a single pass over the rows."""

    @staticmethod
    def forward(ctx, r0, losses, last_residual, codes, books):
        ctx.save_for_backward(last_residual)
        ctx.codes, ctx.books = codes, books
        return losses.clone()

    @staticmethod
    def backward(ctx, grad):
        (r_n,) = ctx.saved_tensors
        w = grad.double() * (2.0 / r_n.numel())
        prefix = torch.cumsum(w, 0)  # prefix[j - 1] = c_j
        if len(ctx.books) == 1:
            return r_n * float(w[0]), None, None, None, None
        size = ctx.books[0].shape[0]
        table = torch.cat([book * float(prefix[j - 1]) for j, book in enumerate(ctx.books) if j > 0])
        offsets = torch.arange(len(ctx.books) - 1, device=r_n.device) * size
        bags = torch.stack(ctx.codes[1:], dim=1) + offsets  # (N, n - 1) rows into the stacked table
        g = F.embedding_bag(bags, table, mode="sum")
        return g.add_(r_n, alpha=float(prefix[-1])), None, None, None, None


class _StraightThrough(torch.autograd.Function):
    """`anchor - sg(anchor) + restored` in one contiguous tensor instead of two temporaries: the
    value of `restored`, the gradient passed unchanged to both `anchor` and `restored`."""

    @staticmethod
    def forward(ctx, anchor, restored):
        return restored.contiguous() if restored is not anchor else restored.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, grad


@contextlib.contextmanager
def frozen_codebooks(module: nn.Module) -> Iterator[None]:
    """Forward in train mode without any codebook side effect (no init, EMA or replacement)."""
    books = [m for m in module.modules() if isinstance(m, Codebook)]
    previous = [b.updates_frozen for b in books]
    for b in books:
        b.updates_frozen = True
    try:
        yield
    finally:
        for b, p in zip(books, previous, strict=True):
            b.updates_frozen = p


def _check_options(dim, num_quantizers, codebook_size, codebook_dim, normalization, update, init,
                   commitment_weight, decay, dead_code_threshold, quantizer_dropout) -> None:
    check_normalization(normalization)
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    for name, value, low in (("dim", dim, 1), ("num_quantizers", num_quantizers, 1), ("codebook_size", codebook_size, 2)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if codebook_dim is not None and (not isinstance(codebook_dim, int) or codebook_dim < 1):
        raise ValueError(f"codebook_dim must be None or a positive integer, got {codebook_dim!r}")
    if not 0.0 < decay < 1.0:
        raise ValueError(f"decay must be in (0, 1), got {decay!r}")
    if not 0.0 <= quantizer_dropout <= 1.0:
        raise ValueError(f"quantizer_dropout must be in [0, 1], got {quantizer_dropout!r}")
    if commitment_weight < 0:
        raise ValueError(f"commitment_weight must be >= 0, got {commitment_weight!r}")
    if dead_code_threshold < 0:
        raise ValueError(f"dead_code_threshold must be >= 0, got {dead_code_threshold!r}")


__all__ = ["NORMALIZATIONS", "RVQOutput", "ResidualVQ", "frozen_codebooks"]
