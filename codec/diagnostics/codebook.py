"""F1 and F2 from a level's stored state: untrained levels, drifted values, dead codes.

These rules read only what a checkpoint holds (the codebook, its initial copy, the EMA usage
`cluster_size`, the training-step count and the EMA of the level's input scale `input_scale`), so
`codec inspect` on a checkpoint and the live monitor at the same step reach the same verdicts.

- F1, *never trained*: an active level that was never initialised, never had a training step, or
  never moved from its initial codebook (one step right after a k-means init is a fixed point and
  counts as trained). A level switched on at the checkpoint's own step has not had a step yet: that
  is a note, not a failure.
- F2, *drift*: values of the codes in use beyond `drift_factor` x the level's input scale (an
  EMA of the largest |value| of a sample of its training inputs). An EMA code is an average of the
  inputs it was assigned, so a code in use far outside them is a gradient-trained codebook that ran
  away or a scale that something downstream compensates (the reports: 16x, values of +-72 where
  +-4.5 was normal). The factor is 6, not 3: the scale is a smoothed sample maximum, and a code
  that serves a deep level's rare outlier frames sat at 3.0x on a healthy 300-step `waveform_l1`
  run (CI's false F2). Dead codes are left out: as a run learns, a deep level's residual shrinks
  and the codes it stops picking keep their old, larger values; they are harmless, re-seeding
  replaces them, and too many of them is the dead-code rule's verdict. And the codes beyond the
  factor must take at least `drift_min_usage` (5 %) of the level's EMA usage: one outlier frame
  gets a code of its own on every level its residual reaches, which sits far out while it is
  remembered (measured on a healthy `phase_1 + gan` run, seed 2, step 1750: one code per level 2-7
  at 7-12x, each with 0.05-0.09 % of the usage, back in range by step 2000). A drifted codebook
  moves the codes in use together (the reports: every live code of Q0 at 16x).
- F2, *dead codes*: more than `max_dead_fraction` of the codes have an EMA usage below
  `dead_usage_fraction` of the level's mean usage (relative, so the rule does not depend on the
  batch size; the reports counted codes under 0.1 % usage: 867 of 1024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from codec.diagnostics.settings import FromSettings
from codec.diagnostics.verdict import Verdict, level_label, level_subject
from codec.quantize.stats import distance_from_init

MOVED_FROM_INIT = 1e-6  # relative mean distance from init above which a codebook has moved

DRIFT_REMEDY = ("normalise the quantizer input (normalization zscore / l2) or lower the EMA decay; re-seed "
                "stale codes (quantizer.dead_code_threshold); check for a learnable scale compensating "
                "downstream (quantizer.post_scale)")
DEAD_REMEDY_SEEDED = ("k-means init and re-seeding are already on, so this level's inputs do not spread over "
                      "its codes: try a smaller codebook_size, fewer levels or larger batches")
NON_FINITE_REMEDY = ("the encoder output is diverging: lower the learning rate, clip gradients, check the input "
                     "audio for NaN or huge values; the codebook kept its last finite state")
DEAD_REMEDY = "initialise from data (quantizer.init: kmeans) and re-seed dead codes (quantizer.dead_code_threshold > 0)"


@dataclass(frozen=True)
class CodebookRule(FromSettings):
    """Thresholds of the stored-state rules (keys of `diagnostics.codebook`)."""

    drift_factor: float = 6.0          # values of codes in use beyond this x the level's input scale
    drift_min_usage: float = 0.05      # ... when those codes take at least this share of the level's usage
    max_dead_fraction: float = 0.75    # more dead codes than this fraction of the codebook
    dead_usage_fraction: float = 0.01  # a code is dead below this fraction of the level's mean usage
    min_trained_steps: int = 200       # EMA usage and input scale settle before they are judged

    def __post_init__(self):
        # Out of range, a threshold either flags every healthy level or can never fire: say so at start.
        if not self.drift_factor > 1:
            raise ValueError(f"diagnostics.codebook.drift_factor must be > 1 (codes are averages of the level's "
                             f"inputs, so within 1x its input scale), got {self.drift_factor}")
        for name in ("drift_min_usage", "max_dead_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"diagnostics.codebook.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 <= self.dead_usage_fraction < 1:
            raise ValueError("diagnostics.codebook.dead_usage_fraction must be in [0, 1) (a fraction of the "
                             f"level's mean usage), got {self.dead_usage_fraction}")
        if self.min_trained_steps < 0:
            raise ValueError(f"diagnostics.codebook.min_trained_steps must be >= 0, got {self.min_trained_steps}")


def level_trained(initialized: bool, trained_steps: int, codebook: torch.Tensor,
                  initial_codebook: torch.Tensor) -> bool:
    """Initialised, had training steps and moved from its init (or exactly one step after k-means)."""
    steps = int(trained_steps)
    moved = distance_from_init(codebook, initial_codebook) > MOVED_FROM_INIT
    return bool(initialized) and steps > 0 and (steps == 1 or moved)


def dead_code_count(cluster_size: torch.Tensor, rule: CodebookRule | None = None) -> int:
    """Codes whose EMA usage is below `dead_usage_fraction` of the level's mean usage."""
    rule = rule or CodebookRule()
    usage = cluster_size.detach().double()
    mean = usage.sum() / max(1, usage.numel())
    return int((usage < rule.dead_usage_fraction * mean).sum())


def live_value_range(codebook: torch.Tensor, cluster_size: torch.Tensor,
                     rule: CodebookRule | None = None) -> tuple[float, float]:
    """(min, max) of the values of the codes in use (not dead by `dead_usage_fraction`); of every
    code when none is in use."""
    rule = rule or CodebookRule()
    book = codebook.detach().float()
    usage = cluster_size.detach().double()
    live = usage >= rule.dead_usage_fraction * (usage.sum() / max(1, usage.numel()))
    if bool(live.any()):
        book = book[live.to(book.device)]
    return float(book.min()), float(book.max())


def drifted_usage(codebook: torch.Tensor, cluster_size: torch.Tensor, input_scale: torch.Tensor | float | None,
                  rule: CodebookRule | None = None) -> float | None:
    """Share of the level's EMA usage taken by codes with a value beyond `drift_factor` x the input
    scale; None when the scale was never measured or no code was used."""
    rule = rule or CodebookRule()
    scale = measured_scale(input_scale)
    usage = cluster_size.detach().double().clamp_min(0)
    total = float(usage.sum())
    if scale is None or total <= 0:
        return None
    far = codebook.detach().abs().amax(dim=-1).to(usage.device) > rule.drift_factor * scale
    return float(usage[far].sum()) / total


def usage_perplexity(cluster_size: torch.Tensor) -> float:
    """2 ** entropy of the EMA usage taken as a distribution: codes in use over the last ~1/(1-decay) steps."""
    usage = cluster_size.detach().double().clamp_min(0)
    total = usage.sum()
    if total <= 0:
        return 0.0
    p = usage[usage > 0] / total
    return float(2.0 ** float(-(p * p.log2()).sum()))


@dataclass
class LevelState:
    """What the rules read of one level, from a live Codebook or a checkpoint's tensors."""

    level: int
    active: bool
    initialized: bool
    trained_steps: int
    codebook_size: int
    value_min: float  # of the codes in use (every code when none is)
    value_max: float
    input_scale: float | None  # EMA of the largest |input| (None: not stored, e.g. an older checkpoint)
    dead_codes: int
    reseeding: bool            # dead-code replacement and k-means init are on
    rejected_updates: int = 0  # codebook updates refused because their result was not finite
    drifted_usage: float | None = None  # usage share of the codes beyond drift_factor (None: not measured)

    @property
    def value_absmax(self) -> float:
        return max(abs(self.value_min), abs(self.value_max))


def level_state(level: int, active: bool, codebook: torch.Tensor, cluster_size: torch.Tensor, initialized: bool,
                trained_steps: int, input_scale: torch.Tensor | float | None, reseeding: bool,
                rule: CodebookRule | None = None, rejected_updates: int = 0) -> LevelState:
    low, high = live_value_range(codebook, cluster_size, rule)
    return LevelState(level, active, bool(initialized), int(trained_steps), codebook.shape[0], low, high,
                      measured_scale(input_scale), dead_code_count(cluster_size, rule), reseeding,
                      int(rejected_updates), drifted_usage(codebook, cluster_size, input_scale, rule))


def measured_scale(input_scale: torch.Tensor | float | None) -> float | None:
    """The stored input scale as a float, None when it was never measured (0, NaN or absent)."""
    scale = None if input_scale is None else float(input_scale)
    return scale if scale is not None and math.isfinite(scale) and scale > 0 else None


def judge_level(state: LevelState, step: int, rule: CodebookRule | None = None, quantizer: str = "") -> list[Verdict]:
    """F2 drift and dead codes of one trained, active level (after `min_trained_steps`) of the
    quantizer named `quantizer` ("" when the module holds one)."""
    rule = rule or CodebookRule()
    label, subject = level_label(quantizer, state.level), level_subject(quantizer, state.level)
    verdicts = []
    if state.rejected_updates > 0:  # whatever the step: a refused update means the inputs blew up
        verdicts.append(Verdict(
            "F3", step, f"{label} refused {state.rejected_updates} codebook updates whose result was not finite: "
            "its inputs reached values whose squares or sums overflow", NON_FINITE_REMEDY, "codebook.non_finite_update",
            subject, {"rejected_updates": state.rejected_updates}))
    if not (state.active and state.initialized) or state.trained_steps < rule.min_trained_steps:
        return verdicts
    if state.input_scale is not None and state.value_absmax > rule.drift_factor * state.input_scale and (
            state.drifted_usage is None or state.drifted_usage >= rule.drift_min_usage):
        share = "" if state.drifted_usage is None else \
            f"; the codes beyond {rule.drift_factor:g}x take {state.drifted_usage:.0%} of its usage"
        verdicts.append(Verdict(
            "F2", step, f"{label} codes in use span [{state.value_min:.3g}, {state.value_max:.3g}], "
            f"{state.value_absmax / state.input_scale:.1f}x the largest |input| it sees (EMA {state.input_scale:.3g})"
            f"{share}", DRIFT_REMEDY, "codebook.drift", subject,
            {"value_min": state.value_min, "value_max": state.value_max, "input_scale": state.input_scale,
             "drifted_usage": state.drifted_usage}))
    if state.dead_codes > rule.max_dead_fraction * state.codebook_size:
        verdicts.append(Verdict(
            "F2", step, f"{label} has {state.dead_codes}/{state.codebook_size} dead codes (EMA usage below "
            f"{rule.dead_usage_fraction:g}x the level's mean)", DEAD_REMEDY_SEEDED if state.reseeding else DEAD_REMEDY,
            "codebook.dead_codes", subject, {"dead_codes": state.dead_codes, "codebook_size": state.codebook_size}))
    return verdicts
