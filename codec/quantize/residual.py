"""Residual vector quantization: a stack of Codebook levels, each quantizing what the previous left.

Data flow (channels first, like DAC and EnCodec):

    z (B, dim, T) -> normalizer.transform -> rows (B*T, dim)
      level i: x_i = in_proj(r_i); q_i = nearest codeword; out_i = out_proj(sg(q_i))
               r_{i+1} = r_i - sg(out_i)     # residual keeps an identity path to z
    Q = sum_i mask_i * (post_scale_i * out_i + post_bias_i)
    quantized = anchor - sg(anchor) + restore(Q)   # straight-through, exactly once

`straight_through="level"` is DAC's and SoundStream's form instead: each level emits
out_proj(x_i + sg(q_i - x_i)) and the residual subtracts it undetached, with no stack-level
straight-through. The reconstruction gradient then reaches every level's in_proj (which, with
the stack-level form, learns from its commitment loss alone and can fold every row onto a few
codes) and the earlier levels through the residual chain, as in dac/nn/quantize.py. It is meant
for factorized codes (codebook_dim): without projections, r_1 = r_0 - out_0 carries no gradient,
so as in EnCodec (encodec #25) the levels after the first get no commitment gradient.

The levels share one `LevelsStep` per forward (stacked lookup tables, one batched codebook update
after the last level) and a plain EMA stack takes the closed-form path (`closed_form.py`).

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
from einops import rearrange
from torch import nn

from codec.quantize import closed_form
from codec.quantize.codebook import INITS, UPDATES, Codebook
from codec.quantize.distributed import any_rank, summed_across_ranks, world_size
from codec.quantize.dropout import sample_levels_per_item
from codec.quantize.lookup import full_precision
from codec.quantize.normalize import NORMALIZATIONS, normalizer_for
from codec.quantize.stats import LevelStats, codebook_utilization
from codec.quantize.step import LevelsStep


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
        normalization: "none" | "zscore" | "l2" | "rms_scale" (see codec.quantize.normalize;
            "l2" is DAC's cosine lookup).
        update: "ema" (codebook is a buffer moved by EMA) | "gradient" (codebook loss trains it).
        commitment_weight: weight of the summed commitment losses in `losses["commit"]`.
        decay: EMA decay of codewords, usage counts and the input scale.
        init: "kmeans" (from the first training batch) | "random" (standard normal).
        dead_code_threshold: codes whose EMA usage (assignments per step) falls below it are
            moved onto recent inputs; 0 disables replacement.
        quantizer_dropout: probability that a training item uses a random number of levels.
        post_scale: learnable per-level, per-channel scale and bias on each level's output
            (the reports' Phase A structure).
        straight_through: "stack" (default): one straight-through for the whole stack, detached
            residuals; "level": DAC's per-level straight-through inside each level's projections
            (see the module docstring).
        kmeans_iters: Lloyd iterations of the k-means init.
        compile: torch.compile the batched codebook update (fewer, fused kernels on a GPU; the
            first training step pays the compilation).
        chunk_rows: rows per distance chunk (default: about 4M distances per chunk).
        check_finite: NaN/inf input. "eager" (or True): a ValueError naming the counts, read back
            before anything is updated (one host-device synchronisation per forward); "deferred":
            no synchronisation, non-finite values cannot move any codebook (their updates are
            rejected code by code and counted in each level's `rejected_updates`) and the loss
            shows them; "auto" (default): eager for CPU tensors, deferred on accelerators;
            False: no check.
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
        straight_through: str = "stack",
        kmeans_iters: int = 10,
        compile: bool = False,
        chunk_rows: int | None = None,
        check_finite: bool | str = "auto",
    ):
        super().__init__()
        _check_options(
            dim, num_quantizers, codebook_size, codebook_dim, normalization, update, init,
            commitment_weight, decay, dead_code_threshold, quantizer_dropout, check_finite, straight_through,
        )
        self.dim = dim
        self.num_quantizers = num_quantizers
        self.codebook_size = codebook_size
        self.normalization = normalization
        self.normalizer = normalizer_for(normalization)
        self.update = update
        self.commitment_weight = commitment_weight
        self.quantizer_dropout = quantizer_dropout
        self.straight_through = straight_through
        self.check_finite = check_finite
        self.levels = nn.ModuleList(
            Codebook(
                dim, codebook_size, codebook_dim, metric=self.normalizer.metric, update=update, decay=decay,
                init=init, kmeans_iters=kmeans_iters, dead_code_threshold=dead_code_threshold,
                chunk_rows=chunk_rows, compile=compile,
            )
            for _ in range(num_quantizers)
        )
        # A buffer, so every state_dict and checkpoint carries it (F1).
        self.register_buffer("num_active", torch.tensor(num_quantizers, dtype=torch.long))
        self._active_seen: tuple[int, int] | None = None
        self._active_value = num_quantizers
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
        self._active_seen, self._active_value = (self.num_active._version, self.num_active.data_ptr()), n

    @property
    def active_levels(self) -> int:
        """The `num_active` buffer as a Python int, read back from the device only when the buffer
        changed (set, loaded, restored, moved), so per-step callers cause no synchronisation."""
        buffer = self.num_active
        seen = (buffer._version, buffer.data_ptr())
        if seen != self._active_seen:
            self._active_value, self._active_seen = int(buffer), seen
        return self._active_value

    @property
    def side_info_bits_per_item(self) -> int:
        """Bits sent per item besides the codes: the float32 RMS scale for "rms_scale"."""
        return self.normalizer.side_info_bits_per_item

    def bits_per_frame(self, num_levels: int | None = None) -> float:
        return (num_levels or self.active_levels) * math.log2(self.codebook_size)

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
        active = self.active_levels
        if not 1 <= n <= active:
            raise ValueError(
                f"codes have {n} levels but this model has {active} active levels "
                f"(of {self.num_quantizers}); levels beyond {active} were never trained for decoding"
            )
        if codes.dtype not in (torch.int64, torch.int32) or codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"codes must be integers in [0, {self.codebook_size}), got dtype {codes.dtype}, "
                             f"range [{int(codes.min())}, {int(codes.max())}]")
        self.normalizer.check_side(scale)
        b, _, t = codes.shape
        rows = rearrange(codes.long(), "b n t -> (b t) n")
        total = 0.0
        for i in range(n):
            total = total + self._post(i, self.levels[i].lookup(rows[:, i]))
        q = rearrange(total, "(b t) d -> b d t", b=b, t=t)
        return self.normalizer.restore(q, scale)

    def _run(self, z: torch.Tensor, num_levels: int | None, allow_dropout: bool) -> RVQOutput:
        self._check_input(z)
        n = self._levels_to_use(num_levels)
        b, _, t = z.shape
        # The whole stack in float32, autocast off: bf16 distances pick wrong codes, bf16 EMA drifts.
        with full_precision(z.device):
            z32 = z.float()
            normalized, side = self.normalizer.transform(z32)
            anchor = self.normalizer.anchor(z32, normalized)
            dropout = allow_dropout and self.training and self.quantizer_dropout > 0
            if dropout:
                levels_per_item = sample_levels_per_item(b, n, self.quantizer_dropout, z.device)
            else:
                levels_per_item = torch.full((b,), n, dtype=torch.long, device=z.device)
            residual = rearrange(normalized, "b d t -> (b t) d")
            step = LevelsStep(self.levels[:n], residual.shape[0], z.device)
            if self._closed_form(dropout):
                total, codes, commit_per_level = closed_form.quantize(residual, step)
                codebook_losses, used = [], None
            else:
                levels_per_row = levels_per_item.repeat_interleave(t) if dropout else None
                total, codes, commit_per_level, codebook_losses = self._levels(residual, levels_per_row, step)
                used = None if levels_per_row is None else levels_per_row[:, None] > torch.arange(n, device=z.device)
            step.finish(codes, used)

            q = rearrange(total, "(b t) d -> b d t", b=b, t=t)
            restored = self.normalizer.restore(q, None if side is None else side.detach())
            if self.straight_through == "level":  # the gradient already went through every level
                quantized = restored.to(z.dtype)
            else:
                quantized = _StraightThrough.apply(anchor, restored).to(z.dtype)
            losses = {"commit": self.commitment_weight * commit_per_level.sum()}
            if codebook_losses:
                losses["codebook"] = torch.stack(codebook_losses).sum()
        return RVQOutput(
            quantized=quantized,
            codes=rearrange(codes, "(b t) n -> b n t", b=b, t=t),
            losses=losses,
            scale=side,
            levels_per_item=levels_per_item,
            commit_per_level=commit_per_level,
        )

    def _closed_form(self, dropout: bool) -> bool:
        return self.straight_through == "stack" and closed_form.applies(
            self.update, self.levels[0].projected, self.post_scale is not None, dropout)

    def _levels(self, residual, levels_per_row, step):
        """The general loop: projections, post_scale, dropout masks, gradient-trained codebooks."""
        total = 0.0
        codes, commits, codebook_losses = [], [], []
        per_level_straight_through = self.straight_through == "level"
        for i in range(len(step.levels)):
            level = self.levels[i]
            row_mask = None if levels_per_row is None else levels_per_row > i
            row_weight = None if row_mask is None else row_mask.to(residual.dtype)
            x = level.in_proj(residual)
            out = level.emit(x, step.search(i, x, row_mask), row_weight, per_level_straight_through)
            contribution = self._post(i, out.output)
            total = total + (contribution if row_weight is None else contribution * row_weight[:, None])
            if per_level_straight_through:  # DAC: later levels' gradients reach this one's projections
                residual = residual - out.output
            else:
                # The *detached* output: every level's commitment loss reaches the encoder, and none
                # reaches an earlier level's out_proj (tests/test_gradients.py pins it).
                residual = residual - out.output.detach()
            codes.append(out.codes)
            commits.append(out.commit)
            if out.codebook is not None:
                codebook_losses.append(out.codebook)
        return total, torch.stack(codes, dim=1), torch.stack(commits), codebook_losses

    def _post(self, level: int, output: torch.Tensor) -> torch.Tensor:
        if self.post_scale is None:
            return output
        return output * self.post_scale[level] + self.post_bias[level]

    def _levels_to_use(self, num_levels: int | None) -> int:
        active = self.active_levels
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
        if not _checks_eagerly(self.check_finite, z.device):
            return
        # One reduction catches NaN/inf (they propagate into the sum); only a non-finite sum,
        # which may also be a float overflow of finite values, pays for the exact check.
        bad = not bool(torch.isfinite(z.sum())) and not bool(torch.isfinite(z).all())
        # A training forward runs collectives (codec.quantize.distributed): every rank raises, or none.
        anywhere = any_rank(bad, z.device) if self.levels[0].side_effects_allowed() else bad
        if bad:
            n_nan = int(torch.isnan(z).sum())
            n_inf = int(torch.isinf(z).sum())
            raise ValueError(
                f"ResidualVQ input z contains {n_nan} NaN and {n_inf} inf values (shape {tuple(z.shape)}): "
                "the encoder output is not finite; nothing was quantized and no codebook was updated"
            )
        if anywhere:
            raise ValueError("ResidualVQ input z of another process is not finite (its own error names the "
                             "counts); nothing was quantized and no codebook was updated")

    # ------------------------------------------------------------- statistics
    def level_stats(self, across_ranks: bool = False) -> list[LevelStats]:
        """Per-level statistics after the last forward (histogram, perplexity, usage, norms).
        Reads values back to the host: call it on logging steps.

        `last_histogram` is this process's own; `across_ranks=True` describes the histograms
        summed over the ranks of a torch.distributed run instead (one collective: every rank must
        call it at the same step). Everything else is already the same on every rank."""
        active = self.active_levels
        histograms = [None] * len(self.levels)
        if across_ranks and world_size() > 1:
            local = [level.last_histogram for level in self.levels]
            like = next((h for h in local if h is not None), None)
            if like is not None:
                stacked = torch.stack([torch.zeros_like(like) if h is None else h for h in local])
                histograms = list(summed_across_ranks(stacked).unbind(0))
        return [level.stats(i, i < active, h) for i, (level, h) in enumerate(zip(self.levels, histograms, strict=True))]

    def utilization(self, stats: list[LevelStats] | None = None) -> float:
        """DAC's effective codebook utilisation (%) over the active levels' last histograms.

        Pass the result of `level_stats()` when you have it, to not compute it twice."""
        stats = self.level_stats() if stats is None else stats
        return codebook_utilization([s.histogram for s in stats if s.active], self.codebook_size)


FINITE_CHECKS = (True, False, "auto", "eager", "deferred")
STRAIGHT_THROUGH = ("stack", "level")


def _checks_eagerly(check_finite: bool | str, device: torch.device) -> bool:
    """Whether `check_finite` reads the input's finiteness back before quantizing on `device`."""
    if check_finite == "auto":
        return device.type == "cpu"  # a CPU tensor's check waits for no device
    return check_finite is True or check_finite == "eager"


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
                   commitment_weight, decay, dead_code_threshold, quantizer_dropout, check_finite="auto",
                   straight_through="stack") -> None:
    normalizer_for(normalization)
    if straight_through not in STRAIGHT_THROUGH:
        raise ValueError(f"straight_through must be one of {STRAIGHT_THROUGH}, got {straight_through!r}")
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
    if not any(check_finite is c if isinstance(c, bool) else check_finite == c for c in FINITE_CHECKS):
        raise ValueError(f"check_finite must be one of {FINITE_CHECKS}, got {check_finite!r}")


__all__ = ["NORMALIZATIONS", "RVQOutput", "ResidualVQ", "frozen_codebooks"]
