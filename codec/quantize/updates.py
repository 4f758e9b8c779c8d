"""The training-only update of a stack's codebooks: statistics first, then one batched application.

While the levels run, each one that trains contributes its step statistics (`StatisticsCollector`);
after the last level they are stacked over the levels, L of them:

    counts     (L, K)     assignments of the rows that used the level (from the step's histograms)
    sums       (L, K, D)  sum of those rows per code (EMA codebooks only)
    low, high  (L,)       smallest and largest value of a strided sample of those rows
    candidates (L, K, D)  one sampled row per code, where a dead code may be re-seeded
    valid      (L, K)     whether each candidate row used the level

`codec.quantize.distributed.reduce_statistics` is the one place a data-parallel run reduces them
across processes (sum the counts and sums, min/max the sample range, each code's candidate from
one rank, so all re-seed alike); in one process it returns them as they are. `updated_state` then computes the new state of
every level at once from the stacked state (`stacked_state`), as a fixed set of masked operations:
no host-device synchronisation, and the same kernels whatever the number of levels, codes or dead
codes (`write_back_` copies it into the levels' buffers). It

1. takes one EMA step of the usage (`cluster_size`) and, for EMA codebooks, of the sums;
2. rejects non-finite results code by code (inputs near the float32 limit overflow a sum): those
   codes keep their previous state, and `rejected_updates` counts them;
3. re-seeds codes whose usage fell below the dead-code threshold onto the candidate rows, *after*
   the EMA normalisation and with their EMA state rewritten, so they stay there (encodec #61);
4. moves `input_scale`, an EMA of the largest |value| of the level's inputs.

Levels that no row used this step (quantizer dropout; on any rank) are left exactly as they were.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# Rows of the strided sample the input scale is measured on: aminmax of ~1024 rows is 20x cheaper
# than a max-abs over every row, and the largest values of a batch are not rare.
SCALE_SAMPLE_ROWS = 1024
INF = float("inf")  # `x < INF` is false for NaN and inf: one kernel where isfinite takes four


class StepStatistics(NamedTuple):
    counts: torch.Tensor  # (L, K) float32
    sums: torch.Tensor | None  # (L, K, D) float32, EMA codebooks only
    low: torch.Tensor  # (L,)
    high: torch.Tensor  # (L,)
    candidates: torch.Tensor | None  # (L, K, D), None when dead codes are not re-seeded
    valid: torch.Tensor | None  # (L, K) bool: the candidate row used the level


class UpdateRule(NamedTuple):
    """The settings every level of a stack shares."""

    ema: bool  # EMA codebook (else the codebook learns by gradient and only usage is tracked)
    decay: float
    eps: float
    dead_code_threshold: float

    @property
    def reseeds(self) -> bool:
        return self.dead_code_threshold > 0


def laplace_smoothed(counts: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Counts (..., K) with `eps` added to every code, rescaled to keep each row's total."""
    total = counts.sum(dim=-1, keepdim=True)
    return (counts + eps) / (total + counts.shape[-1] * eps) * total


def code_histograms(codes: torch.Tensor, codebook_size: int, used: torch.Tensor | None = None) -> torch.Tensor:
    """(L, K) int64 counts of the codes (N, L) of L levels, over the rows that used each level
    (`used` (N, L) bool; None: every row). One scatter for every level: bincount would read its
    input's maximum back to the host on a GPU."""
    num_levels = codes.shape[1]
    flat = codes + torch.arange(num_levels, device=codes.device) * codebook_size
    if used is not None:  # unused rows go to one extra bin, dropped below
        flat = torch.where(used, flat, num_levels * codebook_size)
    bins = torch.zeros(num_levels * codebook_size + 1, dtype=torch.long, device=codes.device)
    bins.scatter_add_(0, flat.reshape(-1), torch.ones_like(flat).reshape(-1))
    return bins[:-1].view(num_levels, codebook_size)


def assignment_sums(inputs: torch.Tensor, codes: torch.Tensor, codebook_size: int,
                    row_mask: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """(K, D) sum of the input rows (N, D) assigned to each code; rows outside `row_mask` count for
    none. `out`: a zeroed (K + 1, D) tensor to accumulate into (its last row takes the unused rows)."""
    if row_mask is not None:
        codes = torch.where(row_mask, codes, codebook_size)
    if out is None:
        out = torch.zeros(codebook_size + 1, inputs.shape[1], dtype=inputs.dtype, device=inputs.device)
    return out.index_add_(0, codes, inputs)[:codebook_size]


class StatisticsCollector:
    """Gathers, level by level, the statistics of the levels that train in one forward, into
    tensors allocated once for all of them (a reduction across processes is then one call each)."""

    def __init__(self, rule: UpdateRule, num_levels: int, num_rows: int, codebook_size: int, dim: int,
                 device: torch.device):
        self.rule = rule
        self.codebook_size = codebook_size
        self.stride = max(1, num_rows // SCALE_SAMPLE_ROWS)
        self.levels: list[int] = []  # the levels that contributed, in order
        self.sums = (torch.zeros(num_levels, codebook_size + 1, dim, device=device) if rule.ema else None)
        self.low = torch.zeros(num_levels, device=device)
        self.high = torch.zeros(num_levels, device=device)
        self.candidates = self.valid = self.draws = None
        if rule.reseeds:
            # Candidate rows for re-seeding, one per code of every level, uniform over the rows and
            # drawn in one go: a fixed shape, whatever the number of dead codes (known only at the end).
            self.draws = torch.randint(0, num_rows, (num_levels, codebook_size), device=device)
            self.candidates = torch.empty(num_levels, codebook_size, dim, device=device)
            self.valid = torch.ones(num_levels, codebook_size, dtype=torch.bool, device=device)

    def add(self, i: int, x: torch.Tensor, codes: torch.Tensor, row_mask: torch.Tensor | None) -> None:
        """Level i's float32 rows x (N, D), its codes (N,) and row_mask (N,) bool or None (all rows)."""
        self.levels.append(i)
        if self.sums is not None:
            assignment_sums(x, codes, self.codebook_size, row_mask, out=self.sums[i])
        sample = x[:: self.stride]
        if row_mask is not None:  # zeros never raise the largest |value|
            sample = torch.where(row_mask[:: self.stride, None], sample, 0.0)
        torch.aminmax(sample, out=(self.low[i], self.high[i]))
        if self.draws is not None:
            torch.index_select(x, 0, self.draws[i], out=self.candidates[i])
            if row_mask is not None:
                torch.index_select(row_mask, 0, self.draws[i], out=self.valid[i])

    def finish(self, counts: torch.Tensor) -> StepStatistics:
        """The statistics of the levels that contributed; `counts` (L, K) are their histograms."""
        stats = StepStatistics(
            counts=counts.float(), sums=None if self.sums is None else self.sums[:, : self.codebook_size],
            low=self.low, high=self.high, candidates=self.candidates, valid=self.valid)
        if len(self.levels) == self.low.shape[0]:
            return stats
        index = torch.tensor(self.levels, device=self.low.device)  # a level met its first rows only now: rare
        return stats._replace(**{name: getattr(stats, name).index_select(0, index)
                                 for name in ("sums", "low", "high", "candidates", "valid")
                                 if getattr(stats, name) is not None})


class LevelState(NamedTuple):
    """The stacked state of L levels (the update reads and returns these)."""

    codebook: torch.Tensor  # (L, K, D): what this step's lookups used
    cluster_size: torch.Tensor  # (L, K)
    embed_sum: torch.Tensor | None  # (L, K, D), EMA only
    input_scale: torch.Tensor  # (L,)
    trained_steps: torch.Tensor  # (L,) int64
    rejected_updates: torch.Tensor  # (L,) int64


class StepResult(NamedTuple):
    state: LevelState
    reseeded: torch.Tensor  # (L,) codes re-seeded per level
    input_absmax: torch.Tensor  # (L,) this step's largest |input value| per level (sampled)


def updated_state(state: LevelState, stats: StepStatistics, rule: UpdateRule) -> StepResult:
    """The state after one training step, with what the step measured.

    Pure and shape-static, so `torch.compile` can fuse it (`ResidualVQ(compile=True)`)."""
    rate = 1.0 - rule.decay
    trained = stats.counts.sum(dim=-1) > 0  # (L,) levels some row used
    per_code = trained[:, None]
    cluster = torch.lerp(state.cluster_size, stats.counts, rate)
    book, embed = state.codebook, state.embed_sum
    rejected = state.rejected_updates
    if rule.ema:
        # The (L, K, D) temporaries are this function's own: the selections below write into them
        # (out=) instead of allocating more, which keeps the step's peak memory near the old one.
        embed = torch.lerp(state.embed_sum, stats.sums, rate)
        book = embed / laplace_smoothed(cluster, rule.eps).unsqueeze(-1)
        ok = _usable(book) & per_code
        rejected = rejected + (per_code & ~ok).sum(dim=-1)
        torch.where(ok[..., None], book, state.codebook, out=book)
        torch.where(ok[..., None], embed, state.embed_sum, out=embed)
        cluster = torch.where(ok, cluster, state.cluster_size)
    else:
        cluster = torch.where(per_code, cluster, state.cluster_size)
    reseeded = torch.zeros_like(state.trained_steps)
    if rule.reseeds:
        candidates = stats.candidates
        move = (cluster < rule.dead_code_threshold) & _usable(candidates) & stats.valid & per_code
        # Half the threshold as mass: below it, so a re-seeded code still counts as dead until inputs
        # choose it, and non-zero, so the next EMA step keeps it where it was put.
        mass = 0.5 * rule.dead_code_threshold
        book = torch.where(move[..., None], candidates, book, out=None if book is state.codebook else book)
        cluster = cluster.masked_fill(move, mass)
        if rule.ema:
            torch.where(move[..., None], candidates * mass, embed, out=embed)
        reseeded = move.sum(dim=-1)
    absmax = torch.maximum(stats.high, -stats.low)
    measured = (absmax > 0) & (absmax < INF) & trained
    moved = torch.where(state.input_scale > 0, torch.lerp(state.input_scale, absmax, rate), absmax)
    scale = torch.where(measured, moved, state.input_scale)
    new = LevelState(codebook=book, cluster_size=cluster, embed_sum=embed, input_scale=scale,
                     trained_steps=state.trained_steps + trained.long(), rejected_updates=rejected)
    return StepResult(new, reseeded, absmax)


def _usable(codewords: torch.Tensor) -> torch.Tensor:
    """(L, K) whether each codeword (L, K, D) can be searched: its norm (the lookup's bias is its
    square) is finite. False for NaN, inf and values near the float32 limit."""
    return torch.linalg.vector_norm(codewords, dim=-1).square() < INF


def stacked_state(levels, codebooks: torch.Tensor) -> LevelState:
    ema = levels[0].update == "ema"
    return LevelState(
        codebook=codebooks,
        cluster_size=torch.stack([lvl.cluster_size for lvl in levels]),
        embed_sum=torch.stack([lvl.embed_sum for lvl in levels]) if ema else None,
        input_scale=torch.stack([lvl.input_scale for lvl in levels]),
        trained_steps=torch.stack([lvl.trained_steps for lvl in levels]),
        rejected_updates=torch.stack([lvl.rejected_updates for lvl in levels]),
    )


@torch.no_grad()
def write_back_(levels, new: LevelState) -> None:
    """Copy the stacked state into each level's buffers: one multi-tensor copy per field."""
    for field in ("codebook", "cluster_size", "embed_sum", "input_scale", "trained_steps", "rejected_updates"):
        value = getattr(new, field)
        if value is not None:
            torch._foreach_copy_([getattr(lvl, field) for lvl in levels], list(value.unbind(0)))
