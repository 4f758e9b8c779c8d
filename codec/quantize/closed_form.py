"""The closed-form path of a plain EMA stack: no projections, no post_scale, no dropout.

Same result as the general loop in `residual.py` (a test compares them, state included), at a
fraction of its cost: the residual is updated in place without autograd, the sum of codewords is
r_0 - r_n, and the commitment losses mean(r_{i+1}^2) get their gradient to r_0 in closed form
(`StackCommitment`). The general loop spends a quarter of the step on per-level autograd
bookkeeping (bench/quantizer.py). Backward keeps only r_n, the codes and the stacked codebooks,
so memory does not grow with the number of levels times the rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from codec.quantize.step import LevelsStep


def applies(update: str, projected: bool, post_scale: bool, dropout: bool) -> bool:
    return update == "ema" and not projected and not post_scale and not dropout


def quantize(residual: torch.Tensor, step: LevelsStep) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sum of the levels' codewords (N, dim), codes (N, L), commitment loss per level (L,))."""
    work = residual.detach().clone(memory_format=torch.contiguous_format)
    codes, squares = [], []
    for i in range(len(step.levels)):
        level_codes = step.search(i, work)
        work.sub_(F.embedding(level_codes, step.books[i]))
        codes.append(level_codes)
        flat = work.view(-1)
        squares.append(torch.dot(flat, flat))  # ||r_{i+1}||^2 in one kernel
    codes = torch.stack(codes, dim=1)
    commits = StackCommitment.apply(residual, torch.stack(squares) / work.numel(), work, codes, step.books)
    return residual.detach() - work, codes, commits


class StackCommitment(torch.autograd.Function):
    """Per-level commitment losses of a projection-free stack, mean(r_{i+1}^2) (computed by the
    caller), with the gradient to the stack input r_0 in closed form: r_{i+1} = r_0 - sg(codewords
    of levels <= i), so d mean(r_{i+1}^2) / d r_0 = 2 r_{i+1} / numel. Equal to mse(x_i, sg(q_i)).

    Only the last residual r_n, the codes and the stacked codebooks are kept. With
    r_{i+1} = r_n + sum_{j>i} q_j, the gradient sum_i w_i r_{i+1} is W r_n + sum_{j>=1} c_j q_j,
    c_j = w_0 + ... + w_{j-1}: one embedding_bag over the codebooks scaled by c_j re-gathers and
    sums every level's codewords in a single pass over the rows. Every factor stays a device
    tensor: no value is read back to the host."""

    @staticmethod
    def forward(ctx, r0, losses, last_residual, codes, books):
        ctx.save_for_backward(last_residual, codes, books)
        return losses.clone()

    @staticmethod
    def backward(ctx, grad):
        r_n, codes, books = ctx.saved_tensors
        w = grad.double() * (2.0 / r_n.numel())
        prefix = torch.cumsum(w, 0).to(r_n.dtype)  # prefix[j - 1] = c_j
        num_levels, size, dim = books.shape
        if num_levels == 1:
            return r_n * prefix[0], None, None, None, None
        table = (books[1:] * prefix[:-1, None, None]).reshape(-1, dim)
        offsets = torch.arange(num_levels - 1, device=r_n.device) * size
        g = F.embedding_bag(codes[:, 1:] + offsets, table, mode="sum")  # (N, L - 1) rows into the table
        return g.addcmul_(r_n, prefix[-1]), None, None, None, None
