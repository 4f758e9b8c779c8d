"""Train-vs-eval usage (F7): the same batches through the model in train mode and in eval mode.

The report's VQ classifier had perplexity 150 in training and 1.06 in evaluation (accuracy at
chance): layers that behave differently in the two modes (BatchNorm running statistics, dropout)
fed the quantizer different inputs. At validation this callback keeps the codes the eval-mode
validation forward produced for up to `max_batches` batches, runs the same batches through the
module again in train mode, and compares per quantizer level: the
perplexity and codes used in each mode, the agreement of the codes, and the Jensen-Shannon
divergence (bits) between the two usage histograms.

The train-mode pass has no side effects: gradients are off, codebooks are frozen (no init, EMA or
replacement), every buffer (BatchNorm statistics) is restored afterwards, and the random number
generator is forked, so training continues exactly as without this callback.

The eval-mode codes are those the validation forward itself produced (captured by hooks); the
train-mode pass calls the module as `pl_module(inputs)`, the inputs taken from the batch: the
batch itself when it is a tensor, the first element of a tuple/list, or the `input_key` entry of
a dict. Modules with another calling convention define `usage_inputs(batch)`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import lightning as L
import torch

from codec.callbacks.discovery import find_quantizers
from codec.callbacks.distributed import reduce_sum
from codec.callbacks.log_now import log_now
from codec.callbacks.verdict import KeepsVerdicts
from codec.diagnostics.consistency import ConsistencyRule, judge_modes
from codec.quantize.modes import side_effect_free
from codec.quantize.stats import perplexity
from codec.validation_schedule import is_start_validation


class UsageConsistencyMonitor(KeepsVerdicts, L.Callback):
    """Args:
    max_batches: validation batches compared per validation.
    collapse_ratio: flag a level whose eval-mode perplexity is below this fraction of its
        train-mode perplexity (150 -> 1.06 in the report is 0.007).
    min_agreement: also flag a level whose codes agree between modes on fewer than this fraction
        of frames (0 disables).
    input_key: the dict key of the model input when batches are dicts.
    """

    def __init__(self, max_batches: int = 2, collapse_ratio: float = ConsistencyRule.collapse_ratio,
                 min_agreement: float = ConsistencyRule.min_agreement, input_key: str = "input"):
        self.max_batches = max_batches
        self.rule = ConsistencyRule(collapse_ratio, min_agreement)
        self.input_key = input_key
        self._start_verdicts()
        self._batches: list[Any] = []
        self._eval_codes: dict[str, list[torch.Tensor]] | None = None
        self._capture: ExitStack | None = None

    # ---------------------------------------------------------------- collect
    # The eval-mode codes are the ones validation itself produced (hooks on the quantizers during the
    # first `max_batches` batches), so only the train-mode pass is extra work.
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._batches, self._eval_codes = [], None

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or len(self._batches) >= self.max_batches:
            return
        quantizers = find_quantizers(pl_module)
        if self._eval_codes is None:
            self._eval_codes = {name: [] for name, _ in quantizers}
        self._capture = ExitStack()
        self._capture.enter_context(_captured_codes(quantizers, self._eval_codes))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._capture is not None:
            self._capture.close()
            self._capture = None
            self._batches.append(batch)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._batches:
            return
        if trainer.global_step == 0 or is_start_validation(trainer):  # a baseline (codebooks may not be initialised)
            self._batches, self._eval_codes = [], None
            return
        device = pl_module.device
        result = self.compare(pl_module, self._batches, self._eval_codes,
                              combine=lambda t: reduce_sum(trainer, t.to(device)).cpu())
        self._batches, self._eval_codes = [], None
        logs = {}
        for (name, level), row in result.items():
            for key, value in row.items():
                logs[f"val/usage/{name}q{level}/{key}"] = value
        verdicts = [v for (name, level), row in result.items()
                    if (v := judge_modes(trainer.global_step, level, row, self.rule, name.rstrip("/"))) is not None]
        logs["val/health/train_eval_collapse"] = float(bool(verdicts))
        log_now(trainer, logs)
        self.record(verdicts)

    # ---------------------------------------------------------------- compare
    @torch.no_grad()
    def compare(self, pl_module: torch.nn.Module, batches: list[Any],
                eval_codes: dict[str, list[torch.Tensor]] | None = None,
                combine=None) -> dict[tuple[str, int], dict[str, float]]:
        """Per (quantizer prefix, level): perplexity/codes used in each mode, agreement, divergence.

        `eval_codes`: the codes an eval-mode pass over `batches` already produced (validation's);
        without them this runs that pass too. `combine`: sums a level's counts over every rank (DDP)."""
        quantizers = find_quantizers(pl_module)
        if not quantizers:
            return {}
        codes = {"eval": eval_codes}
        for mode in ("eval", "train") if eval_codes is None else ("train",):
            codes[mode] = {name: [] for name, _ in quantizers}
            with side_effect_free(pl_module, train=(mode == "train")), _captured_codes(quantizers, codes[mode]):
                for batch in batches:
                    pl_module(self.inputs(pl_module, batch))
        sizes = {name: rvq.codebook_size for name, rvq in quantizers}
        prefixes = {name: ("" if len(quantizers) == 1 else f"{name}/") for name, _ in quantizers}
        result = {}
        for name, _ in quantizers:
            evals, trains = codes["eval"].get(name, []), codes["train"][name]
            if not evals or not trains:
                continue
            levels = min(min(c.shape[1] for c in evals), min(c.shape[1] for c in trains))
            for level in range(levels):
                ev = torch.cat([c[:, level].reshape(-1) for c in evals])
                tr = torch.cat([c[:, level].reshape(-1) for c in trains])
                size = sizes[name]
                agree = (ev == tr).sum() if ev.shape == tr.shape else torch.tensor(-(ev.numel() + 1))
                counts = torch.cat([torch.bincount(tr, minlength=size), torch.bincount(ev, minlength=size),
                                    torch.stack([agree, torch.tensor(ev.numel())])])
                if combine is not None:
                    counts = combine(counts)
                h_tr, h_ev, (agree, frames) = counts[:size], counts[size:2 * size], counts[2 * size:].tolist()
                result[(prefixes[name], level)] = {
                    "perplexity_train_mode": perplexity(h_tr),
                    "perplexity_eval_mode": perplexity(h_ev),
                    "codes_used_train_mode": float((h_tr > 0).sum()),
                    "codes_used_eval_mode": float((h_ev > 0).sum()),
                    "agreement": agree / frames if agree >= 0 else math.nan,
                    "js_divergence_bits": js_divergence_bits(h_tr, h_ev),
                }
        return result

    def inputs(self, pl_module, batch):
        if hasattr(pl_module, "usage_inputs"):
            return pl_module.usage_inputs(batch)
        if isinstance(batch, torch.Tensor):
            return batch
        if isinstance(batch, (tuple, list)):
            return batch[0]
        if isinstance(batch, dict) and self.input_key in batch:
            return batch[self.input_key]
        raise TypeError(
            f"UsageConsistencyMonitor cannot find the model input in a {type(batch).__name__} batch: "
            f"give the module a usage_inputs(batch) method or set input_key (now {self.input_key!r})"
        )


def js_divergence_bits(p_counts: torch.Tensor, q_counts: torch.Tensor) -> float:
    """Jensen-Shannon divergence in bits between two count histograms (0 = same, 1 = disjoint)."""
    p = p_counts.double() / p_counts.sum().clamp_min(1)
    q = q_counts.double() / q_counts.sum().clamp_min(1)
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> float:
        mask = a > 0
        return float((a[mask] * (a[mask] / m[mask]).log2()).sum())

    return 0.5 * kl(p) + 0.5 * kl(q)


@contextmanager
def _captured_codes(quantizers, captured: dict[str, list[torch.Tensor]]) -> Iterator[None]:
    """Append each quantizer's output codes to `captured[name]` while the context is open."""
    handles = [rvq.register_forward_hook(lambda m, args, out, name=name: captured[name].append(out.codes.detach().cpu()))
               for name, rvq in quantizers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
