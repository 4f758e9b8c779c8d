"""F1 and F2 from code usage: a level that quantizes nothing, or squeezes every row onto a few codes.

Two measurements, because each misses what the other sees:
- the *window* (every `every_n_steps`): the codes an active level used over the window, together.
  An active level that used none is the reports' F1 symptom ("Q2: 0/1024 codes used").
- each *step*: the perplexity of the codes a level chose for that step's rows. On a real phase_b
  run level 0 used 3 codes per batch (perplexity 1.4) for 2,000 steps while the window's union
  stayed near 190 of 256, because every batch used different codes: only the per-step view shows
  that collapse. A step is *low* when its perplexity is below `floor_perplexity`, or below
  `capacity_fraction` of what its rows could reach (min(codebook size, rows)), or below
  `drop_fraction` of the level's own best smoothed per-step perplexity. The share of recent steps
  that were low is an exponential average that reaches 0.8 after `patience_steps` low steps in a
  row; at 0.8 the level is flagged (a few healthy steps inside a collapse do not reset it).
Validation histograms get the same per-step test, once per validation.

A level is judged only `grace_steps` after it was switched on (progressive RVQ), and its window
only when the whole window came after that: a level activated at step 2000 has used no code in
the window that ended there, and that is not a failure.

The per-step arithmetic runs on the device, without a host sync (`StepUsage.update`); the
monitor reads the results on logging steps and logs them, so a replay of `metrics.csv` reaches
the same verdicts as the live run (`UsageTracker`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from codec.diagnostics.settings import FromSettings
from codec.diagnostics.verdict import Verdict, level_label, level_subject

LOW_SHARE = 0.8  # share of recent steps that were low at which a level is flagged

USAGE_REMEDY = ("the level maps every row of a step onto a few codes: check the scale of the quantizer input "
                "(normalization zscore / l2, quantizer.codebook_dim), lower the learning rate, re-seed dead codes "
                "(quantizer.dead_code_threshold) or learn the codebook by gradient with DAC's losses (conf/phase_b.yaml); "
                "with codebook_dim projections under the stack-wide straight-through (quantizer.straight_through: stack), "
                "let the reconstruction train them (straight_through: level, as DAC)")
UNUSED_REMEDY = ("check that this level receives inputs (schedule, quantizer dropout); re-seed dead codes "
                 "(quantizer.dead_code_threshold) and initialise from data (quantizer.init: kmeans)")


@dataclass(frozen=True)
class UsageRule(FromSettings):
    """Thresholds of the usage rules (keys of `diagnostics.codebook`)."""

    min_codes_used: int = 2            # window: an active level using fewer distinct codes is flagged
    floor_perplexity: float = 1.5      # step: below this one code takes most rows, whatever the rows
    capacity_fraction: float = 0.015   # step: below this fraction of min(codebook size, rows)
    drop_fraction: float = 0.1         # step: below this fraction of the level's best smoothed perplexity
    patience_steps: int = 100          # low steps in a row that raise the verdict
    grace_steps: int = 100             # after a level is switched on, nothing is judged or remembered

    def __post_init__(self):
        if self.patience_steps < 1 or self.grace_steps < 0:
            raise ValueError(f"diagnostics.codebook: patience_steps must be >= 1 and grace_steps >= 0, got "
                             f"{self.patience_steps}, {self.grace_steps}")
        if not 0 <= self.capacity_fraction < 1 or not 0 <= self.drop_fraction < 1:
            raise ValueError("diagnostics.codebook: capacity_fraction and drop_fraction must be in [0, 1)")

    @property
    def share_decay(self) -> float:
        """Decay of the low-step share: after `patience_steps` low steps in a row it reaches LOW_SHARE."""
        return (1.0 - LOW_SHARE) ** (1.0 / self.patience_steps)

    def low_bound(self, rows: float, codebook_size: int) -> float:
        """The perplexity below which a step (or a validation) of `rows` rows counts as low."""
        return max(self.floor_perplexity, self.capacity_fraction * min(codebook_size, rows))


def perplexities(histograms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(perplexity, rows, codes used) per row of a (levels, K) count tensor, on its device."""
    counts = histograms.double()
    rows = counts.sum(dim=1)
    p = counts / rows.clamp_min(1).unsqueeze(1)
    entropy = -(p * torch.where(p > 0, p.log2(), torch.zeros_like(p))).sum(dim=1)
    return entropy.exp2(), rows, (histograms > 0).sum(dim=1)


class StepUsage:
    """Per-level running state of the per-step rule for one quantizer, on the quantizer's device.

    `update` costs a dozen small kernels for all levels together and never syncs; `read` syncs
    (call it on logging steps)."""

    SMOOTHING = 0.9  # of the per-step perplexity whose best is remembered

    def __init__(self, rule: UsageRule, levels: int, codebook_size: int, device: torch.device | str = "cpu"):
        self.rule, self.codebook_size = rule, codebook_size
        zeros = torch.zeros(levels, dtype=torch.float64, device=device)
        self.smoothed = zeros.clone()
        self.best = zeros.clone()
        self.low_share = zeros.clone()
        self.last = zeros.clone()
        self.rows = zeros.clone()
        self.codes_used = zeros.clone()
        self.started = torch.zeros(levels, dtype=torch.bool, device=device)

    @torch.no_grad()
    def update(self, histograms: torch.Tensor, judged: int, first: int = 0) -> None:
        """One training step. histograms: (A, K) of the first A (active) levels; levels
        first..judged-1 are past their grace (judged and remembered)."""
        a = histograms.shape[0]
        ppl, rows, used = perplexities(histograms)
        self.last[:a], self.rows[:a], self.codes_used[:a] = ppl, rows, used.double()
        started = self.started[:a]
        self.smoothed[:a] = torch.where(started, self.SMOOTHING * self.smoothed[:a] + (1 - self.SMOOTHING) * ppl, ppl)
        self.started[:a] = True
        if judged <= first:
            return
        part = slice(first, judged)
        capacity = torch.minimum(rows[part], torch.full_like(rows[part], float(self.codebook_size)))
        bound = torch.clamp_min(self.rule.capacity_fraction * capacity, self.rule.floor_perplexity)
        low = (ppl[part] < bound) | (ppl[part] < self.rule.drop_fraction * self.best[part])
        decay = self.rule.share_decay
        self.low_share[part] = decay * self.low_share[part] + (1 - decay) * low.double()
        self.best[part] = torch.maximum(self.best[part], self.smoothed[part])

    NAMES = ("step_perplexity", "last_step_perplexity", "best_step_perplexity", "low_usage_share", "step_rows",
             "step_codes_used")

    def values(self, levels: int) -> torch.Tensor:
        """(len(NAMES), levels) on the device: what `read` returns, before it leaves the device
        (a monitor averages it over ranks first)."""
        return torch.stack([self.smoothed, self.last, self.best, self.low_share, self.rows, self.codes_used])[:, :levels]

    @classmethod
    def as_dicts(cls, values: torch.Tensor) -> list[dict[str, float]]:
        rows = values.cpu().tolist()
        return [{name: rows[j][i] for j, name in enumerate(cls.NAMES)} for i in range(values.shape[1])]

    def read(self, levels: int) -> list[dict[str, float]]:
        return self.as_dicts(self.values(levels))

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).cpu() for k in ("smoothed", "best", "low_share", "started")}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            getattr(self, key).copy_(value.to(getattr(self, key).device))


class UsageTracker:
    """Judges one quantizer's levels from what the monitor logs (live) or `metrics.csv` (replay).

    `quantizer`: its name when a module holds several ("" otherwise), for messages and subjects."""

    def __init__(self, rule: UsageRule | None = None, codebook_size: int = 0, quantizer: str = ""):
        self.rule = rule or UsageRule()
        self.codebook_size = codebook_size
        self.quantizer = quantizer
        self.raised: set[tuple] = set()

    def label(self, level: int) -> str:
        return level_label(self.quantizer, level)

    def subject(self, level: int) -> str:
        return level_subject(self.quantizer, level)

    def steps(self, step: int, level: int, logged: Mapping[str, float]) -> list[Verdict]:
        """A logging step's per-step view of one level (the `train/codebook/q{i}/*` values)."""
        share = logged.get("low_usage_share")
        if share is None or share < LOW_SHARE:
            return []
        ppl, rows, used = logged.get("step_perplexity", math.nan), logged.get("step_rows", math.nan), \
            logged.get("step_codes_used", math.nan)
        best = logged.get("best_step_perplexity") or math.nan
        bound = self.rule.low_bound(rows, self.codebook_size) if math.isfinite(rows) else math.nan
        return self._raise(("step", level), Verdict(
            "F2", step,
            f"{self.label(level)} collapsed within each step: smoothed perplexity {ppl:.2f} of the codes of "
            f"{rows:.0f} rows per step ({used:.0f} distinct in the last), low for most of the last "
            f"{self.rule.patience_steps} steps (low: below {bound:.2f}"
            + (f" or {self.rule.drop_fraction:g}x its best {best:.1f}" if best > 0 else "") + ")",
            USAGE_REMEDY, "usage.per_step", self.subject(level),
            {"step_perplexity": ppl, "step_rows": rows, "step_codes_used": used, "best_step_perplexity": best}))

    def window(self, step: int, level: int, codes_used: float, window_steps: int, active: int) -> list[Verdict]:
        """A window report of a level that was active for the whole window."""
        if codes_used >= self.rule.min_codes_used:
            return []
        used = int(codes_used)
        return self._raise(("window", level), Verdict(
            "F1" if used == 0 else "F2", step,
            f"{self.label(level)} used {used}/{self.codebook_size} codes in the last {window_steps} steps while "
            f"{active} levels are active", UNUSED_REMEDY, "usage.window", self.subject(level),
            {"window_codes_used": used, "window_steps": window_steps, "active": active}))

    def validation(self, step: int, level: int, ppl: float, rows: float) -> list[Verdict]:
        """A level's usage over one validation (eval mode), judged like one step."""
        bound = self.rule.low_bound(rows, self.codebook_size)
        if not math.isfinite(ppl) or rows <= 0 or ppl >= bound:
            return []
        return self._raise(("validation", level), Verdict(
            "F2", step, f"{self.label(level)} collapsed on validation: perplexity {ppl:.2f} on {rows:.0f} rows "
            f"(low below {bound:.2f})", USAGE_REMEDY, "usage.validation", self.subject(level),
            {"val_perplexity": ppl, "val_rows": rows}))

    def _raise(self, key: tuple, verdict: Verdict) -> list[Verdict]:
        if key in self.raised:
            return []
        self.raised.add(key)
        return [verdict]
