"""Data-parallel training (torch.distributed, DDP): the quantizer's own collectives.

Every rank runs the same model on its own rows. DDP averages the gradients of parameters, but a
codebook's training-only state (k-means init, EMA counts and sums, usage, re-seeding, input scale)
is not a gradient, so the quantizer reduces it itself and every rank applies the same update to
the same state:

- a level's buffers, at its first training step: rank 0's, copied to every rank (`start_alike_`);
- k-means init: every rank gathers every rank's rows and clusters them; rank 0's result is then
  broadcast, so the ranks agree even where their random streams or kernels differ;
- a step's statistics (`reduce_statistics`): counts and sums summed, the sampled input range
  min/max-reduced, each code's re-seeding candidate taken from one rank (code k from rank k mod
  the world size), all before the update, which then decides everything (EMA, rejections,
  re-seeding, input scale) from the same numbers on every rank;
- the eager NaN/inf check of a training forward (`any_rank`): raised on every rank when any
  rank's input fails it, so no rank is left waiting in a collective.

The collectives run only in forwards that update codebooks (train mode, not frozen, not under
inference mode), and every one of them runs for every level the stack runs, whatever the rows
(a rank whose rows skip a level under quantizer dropout still takes part). Eval, frozen and
inference forwards run none, so a callback may run them on one rank alone; every rank must run
the training forwards, with the same `num_active` and `num_levels`.

In one process, or when torch.distributed is not initialised, every function returns its input
unchanged without a collective. The default process group is used. DDP's own buffer broadcast is
not needed (`ddp_buffer_settings()` turns it off).
"""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from codec.quantize.updates import StepStatistics


def world_size() -> int:
    """Processes in the default group; 1 when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def ddp_buffer_settings() -> dict[str, bool]:
    """DistributedDataParallel's keyword that turns its per-step buffer broadcast off (the quantizer
    keeps its buffers equal itself): `forward_sync_buffers` where the installed torch has it (2.14;
    buffers are still synced once at construction), else `broadcast_buffers`."""
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers": False}


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's rows (n_r, D), concatenated in rank order (a k-means init's input: once per
    level, so reading the row counts back is fine)."""
    size = world_size()
    if size == 1:
        return rows
    counts = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([rows.shape[0]], device=rows.device))
    counts = [int(c) for c in counts]
    padded = rows.new_zeros(max(counts), rows.shape[1])  # all_gather wants one shape on every rank
    padded[: rows.shape[0]] = rows
    gathered = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:n] for part, n in zip(gathered, counts, strict=True)])


def broadcast_from_first(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Rank 0's values of `tensors` (float, any shapes) on every rank, in one broadcast."""
    if world_size() == 1:
        return list(tensors)
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.broadcast(flat, src=0)
    return [part.view_as(t).to(t.dtype) for part, t in zip(_split(flat, tensors), tensors, strict=True)]


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is true on any rank (a host-side decision every rank must take alike)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)


def start_alike_(modules) -> None:
    """At a module's first training step under torch.distributed, copy rank 0's buffers into every
    rank's (once per module and process: a Python flag remembers it). Ranks built with different
    seeds (a random codebook is a buffer) then start alike, without relying on DDP's buffer broadcast."""
    if world_size() == 1:
        return
    pending = [m for m in modules if not getattr(m, "_started_alike", False)]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in (b for m in pending for b in m.buffers()):
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    with torch.no_grad():
        for buffers in by_dtype.values():
            flat = torch.cat([b.reshape(-1) for b in buffers])
            if flat.dtype == torch.bool:  # not every backend sends bool
                flat = flat.to(torch.uint8)
            dist.broadcast(flat, src=0)
            for buffer, part in zip(buffers, _split(flat, buffers), strict=True):
                buffer.copy_(part.view_as(buffer))  # copy_ moves the version: the Python mirrors re-read
    for m in pending:
        m._started_alike = True


def summed_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of `tensor` summed over the ranks (histograms for monitors); itself in one process.
    Every rank must call it at the same point."""
    if world_size() == 1:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def reduce_statistics(stats: StepStatistics) -> StepStatistics:
    """The step's statistics of every rank, identical on all of them; one process: unchanged.

    Two collectives whatever the number of levels: one sum (counts, sums, candidates, valid
    flags, flattened together) and one max (largest value and minus the smallest). No value is
    read back to the host."""
    size = world_size()
    if size == 1:
        return stats
    parts = [stats.counts, stats.sums]
    if stats.candidates is not None:
        # Code k's candidate comes from rank k mod size: the others send zeros, so the sum is it.
        codes = torch.arange(stats.counts.shape[-1], device=stats.counts.device)
        mine = (codes % size == dist.get_rank()) & stats.valid
        parts += [torch.where(mine[..., None], stats.candidates, 0.0), mine.float()]
    present = [p for p in parts if p is not None]
    total = torch.cat([p.reshape(-1) for p in present])
    dist.all_reduce(total)
    extremes = torch.stack([stats.high, -stats.low])
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    reduced = iter(part.view_as(p) for part, p in zip(_split(total, present), present, strict=True))
    counts = next(reduced)
    sums = next(reduced) if stats.sums is not None else None
    candidates, valid = stats.candidates, stats.valid
    if candidates is not None:
        candidates, valid = next(reduced), next(reduced) > 0
    return StepStatistics(counts=counts, sums=sums, low=-extremes[1], high=extremes[0],
                          candidates=candidates, valid=valid)


def _split(flat: torch.Tensor, like) -> tuple[torch.Tensor, ...]:
    return torch.split(flat, [t.numel() for t in like])
