"""F7: train mode and eval mode must quantize the same inputs alike.

The reports' VQ classifier had perplexity 150 in training and 1.06 in evaluation (accuracy at
chance): a layer that behaves differently in the two modes (BatchNorm running statistics, dropout)
fed the quantizer other inputs in eval mode. The live monitor compares the same validation batches
in both modes at every validation; `codec eval` does it on a folder. Both call `judge_modes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from codec.diagnostics.settings import FromSettings
from codec.diagnostics.verdict import Verdict, level_label, level_subject

REMEDY = ("eval mode feeds the quantizer other inputs than training: check BatchNorm running statistics "
          "(momentum, a too-small batch) or dropout in front of the quantizer, or use LayerNorm/GroupNorm; "
          "compare with `codec eval CKPT --data DIR`")


@dataclass(frozen=True)
class ConsistencyRule(FromSettings):
    """Thresholds of the F7 rule (keys of `diagnostics.usage`)."""

    collapse_ratio: float = 0.25  # eval-mode perplexity below this fraction of the train-mode one
    min_agreement: float = 0.0    # codes agreeing between modes on fewer frames than this (0: off)


def judge_modes(step: int, level: int, row: Mapping[str, float], rule: ConsistencyRule | None = None,
                quantizer: str = "") -> Verdict | None:
    """row: perplexity_{train,eval}_mode, codes_used_{train,eval}_mode, agreement of one level of the
    quantizer named `quantizer` ("" when the module holds one)."""
    rule = rule or ConsistencyRule()
    ratio = row["perplexity_eval_mode"] / max(row["perplexity_train_mode"], 1e-12)
    low_agreement = rule.min_agreement > 0 and row["agreement"] < rule.min_agreement
    if ratio >= rule.collapse_ratio and not low_agreement:
        return None
    return Verdict(
        "F7", step,
        f"{level_label(quantizer, level)} collapses in eval mode: perplexity {row['perplexity_eval_mode']:.2f} in eval vs "
        f"{row['perplexity_train_mode']:.1f} in train mode ({row['codes_used_eval_mode']:.0f} vs "
        f"{row['codes_used_train_mode']:.0f} codes), codes agree on {100 * row['agreement']:.0f}% of frames",
        REMEDY, "usage.train_vs_eval", level_subject(quantizer, level), dict(row))
