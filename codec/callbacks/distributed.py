"""What a monitor measures on one rank, combined over every rank before a rule decides (DDP).

Under data parallelism each process sees its own batches. A monitor reduces what it measured (sum
of histograms, mean of per-step readings) at the same step on every rank, so every rank reaches the
same verdict at the same step: the summary written by rank 0 is the whole run's, and a run that a
monitor stops, stops on every rank together (a rank left waiting in a collective would hang).
On a single process these are no-ops.
"""

from __future__ import annotations

import torch


def distributed(trainer) -> bool:
    return getattr(trainer, "world_size", 1) > 1


def reduce_sum(trainer, tensor: torch.Tensor) -> torch.Tensor:
    if not distributed(trainer):
        return tensor
    return trainer.strategy.reduce(tensor.clone(), reduce_op="sum")


def reduce_mean(trainer, tensor: torch.Tensor) -> torch.Tensor:
    if not distributed(trainer):
        return tensor
    return trainer.strategy.reduce(tensor.clone(), reduce_op="mean")


def any_rank(trainer, decision: bool) -> bool:
    """True on every rank when it is true on any."""
    if not distributed(trainer):
        return decision
    return bool(trainer.strategy.reduce_boolean_decision(bool(decision), all=False))
