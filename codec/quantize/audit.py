"""Count the operators a piece of code dispatches, and those that wait for the device.

    with OperatorAudit() as audit:
        out = rvq(z); loss(out).backward()
    audit.syncs      # Counter of host-synchronising operators (0 for a quantizer step after its init)
    audit.kernels    # operators that compute (views and detach excluded): a proxy for GPU launches

Works on any device, so a CPU run shows what a GPU step would do: the operators below read a
device value back to the host (`.item()`, `bool(t)`, `int(t)`), or need a result's size before they
can allocate it (nonzero, boolean-mask indexing, unique, bincount), and so block the host until the
GPU has caught up. `torch.cuda.set_sync_debug_mode("error")` is the check on a real GPU.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operators that wait for the device whatever their arguments.
SYNC_OPERATORS = frozenset({
    "_local_scalar_dense", "item", "is_nonzero", "equal", "allclose", "nonzero", "argwhere",
    "masked_select", "masked_scatter", "bincount", "histc", "unique", "_unique", "_unique2",
    "unique_consecutive", "unique_dim", "_assert_async", "tolist",
})
# Operators that do when indexed with a boolean mask (its count of True decides the shape).
INDEXING = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
# Operators that only describe memory (no kernel on a GPU).
METADATA = frozenset({"detach", "alias", "lift_fresh", "_unsafe_view", "empty", "empty_strided"})


def _name(func) -> str:
    return func._schema.name.split("::")[-1]


def synchronizes(func, args) -> bool:
    name = _name(func)
    if name in SYNC_OPERATORS:
        return True
    if name in INDEXING and len(args) > 1:
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ())
    if name == "repeat_interleave":  # with a tensor of repeats, the output size is data-dependent
        return len(args) == 1 or (isinstance(args[1], torch.Tensor) and args[1].numel() > 1)
    return False


def is_view(func) -> bool:
    returns = func._schema.returns
    return bool(returns) and returns[0].alias_info is not None and not func._schema.is_mutable


class OperatorAudit(TorchDispatchMode):
    """A dispatch mode counting every aten operator, the synchronising ones, and the computing ones."""

    def __init__(self):
        super().__init__()
        self.operators: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.kernels: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = _name(func)
        self.operators[name] += 1
        if synchronizes(func, args):
            self.syncs[name] += 1
        if name not in METADATA and not is_view(func):
            self.kernels[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def num_syncs(self) -> int:
        return sum(self.syncs.values())

    @property
    def num_kernels(self) -> int:
        return sum(self.kernels.values())
