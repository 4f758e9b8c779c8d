"""F3 (and F4): the output's level, judged in both directions, at every validation and on training steps.

In the reports every loss fell while the output RMS fell 98 % (collapse); on real-length runs of
this lab the output also grew to 7-437x its target (explosion), carried its energy as a constant
offset (9.3x the input RMS, 0.84x without the DC) or got worse while training went on (mel distance
tripled). The rules (thresholds in `AmplitudeRule`):

- collapse:   RMS ratio (output / target) below `threshold`;
- explosion:  RMS ratio above `high`, or above `severe_high` at once;
- DC offset:  more than `dc_fraction` of the output's energy is its mean;
- divergence: mel distance above `divergence_factor` x its best, or a non-finite value.

Two sources feed the same rules, and the first to be sure wins (each finding is raised once):
- each *validation* (`observe`): `patience` validations in a row;
- each *training step* (`StepAmplitude`, on the device without a host sync; read on logging
  steps, `steps`): the share of recent steps past a bound reaches 0.8 after `patience_steps`
  steps in a row, so an explosion between two validations 250 steps apart is named within about
  `patience_steps` steps of its onset. Nothing is judged in the first `warmup_steps` steps.
The RMS ratio judged is the one without DC whenever it is known, so a DC offset is not mistaken
for loudness. The validation at step 0 (before any training) is a baseline, never judged. The live
monitor and a replay of `metrics.csv` (`codec compare`, `codec reproduce`) reach the same verdicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from codec.diagnostics.settings import FromSettings
from codec.diagnostics.verdict import Verdict

RMS_RATIO = "val/audio/rms_ratio"
RMS_RATIO_NO_DC = "val/audio/rms_ratio_no_dc"
DC_FRACTION = "val/audio/dc_fraction"
DC_OFFSET = "val/audio/dc_offset"
CORRELATION = "val/audio/correlation"
MEL = "val/audio/mel_l1"
LOSS_KEYS = ("train/loss/stft", "train/loss/mel", "train/loss/total")
NORM_KEY = "train/params/{}/weight_norm"
TRAIN_RATIO, TRAIN_DC = "train/audio/rms_ratio", "train/audio/dc_fraction"
SHARES = {"collapse": "train/health/rms_low_share", "explosion": "train/health/rms_high_share",
          "dc": "train/health/dc_share"}
SURE = 0.8  # share of recent steps past a bound at which a per-step finding is raised

COLLAPSE_REMEDY = ("try phase_b (L2/cosine codes, pre_rvq_conv -> RVQ -> out_proj, no RMS losses), the adversarial "
                   "recipe (conf/gan.yaml) or an absolute-RMS loss; compare the loss and structure ablations "
                   "(sweeps/loss.yaml, sweeps/structure.yaml)")
EXPLOSION_REMEDY = ("lower the learning rate, warm it up and clip gradients (trainer.gradient_clip_val); check "
                    "the batch size against the recipe; watch train/params/out_proj/weight_norm")
DC_REMEDY = ("spectral losses do not see a constant offset: keep a waveform term (model.losses.l1) or a "
             "DC-free output; check out_proj's bias (train/params/out_proj/bias_norm)")
DIVERGENCE_REMEDY = ("lower the learning rate or add warm-up and gradient clipping; resume from the checkpoint "
                     "at the best mel distance")
STRUCTURE_REMEDY = ("drop post_scale and final_conv (structure.final_conv: none, quantizer.post_scale: false): "
                    "phase_1's rvq -> out_proj kept its amplitude in the reports")


@dataclass(frozen=True)
class AmplitudeRule(FromSettings):
    """Thresholds of the F3 rules (the `diagnostics.amplitude.*` keys of a config)."""

    threshold: float = 0.1          # collapse: RMS ratio below this
    high: float = 3.0               # explosion: RMS ratio above this
    severe_high: float = 10.0       # explosion at once: RMS ratio above this
    patience: int = 3               # validations in a row
    dc_fraction: float = 0.5        # DC: share of the output energy that is its mean
    divergence_factor: float = 1.5  # divergence: mel distance above this multiple of its best
    patience_steps: int = 100       # training steps in a row past a bound
    warmup_steps: int = 100         # training steps before the per-step rules judge

    def __post_init__(self):
        if self.patience < 1 or self.patience_steps < 1 or self.warmup_steps < 0:
            raise ValueError("diagnostics.amplitude: patience and patience_steps must be >= 1, warmup_steps >= 0; got "
                             f"{self.patience}, {self.patience_steps}, {self.warmup_steps}")
        if not 0 < self.threshold < 1 < self.high <= self.severe_high:
            raise ValueError("diagnostics.amplitude needs 0 < threshold < 1 < high <= severe_high, got "
                             f"{self.threshold}, {self.high}, {self.severe_high}")
        if not 0 < self.dc_fraction <= 1:
            raise ValueError(f"diagnostics.amplitude.dc_fraction must be in (0, 1], got {self.dc_fraction}")
        if self.divergence_factor <= 1:
            raise ValueError(f"diagnostics.amplitude.divergence_factor must be > 1, got {self.divergence_factor}")

    @property
    def share_decay(self) -> float:
        """Decay of a per-step share: after `patience_steps` hits in a row it reaches SURE."""
        return (1.0 - SURE) ** (1.0 / self.patience_steps)


class StepAmplitude:
    """The output level of every training batch, on its device; `update` never syncs, `read` does."""

    SMOOTHING = 0.9
    SILENT = 1e-10  # a batch whose target energy (DC removed) per sample is below this says nothing

    def __init__(self, rule: AmplitudeRule, device: torch.device | str = "cpu"):
        self.rule = rule
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.ratio, self.dc = zero.clone(), zero.clone()
        self.shares = {name: zero.clone() for name in SHARES}
        self.started = torch.zeros((), dtype=torch.bool, device=device)

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor, judged: bool) -> None:
        out, tgt = output.detach().double().flatten(1), target.detach().double().flatten(1)
        out_ac = (out - out.mean(dim=1, keepdim=True)).pow(2).sum()
        out_all = out.pow(2).sum()
        tgt_ac = (tgt - tgt.mean(dim=1, keepdim=True)).pow(2).sum()
        heard = tgt_ac > self.SILENT * tgt.numel()
        ratio = (out_ac / tgt_ac.clamp_min(1e-30)).sqrt()
        dc = (out_all - out_ac).clamp_min(0) / out_all.clamp_min(1e-30)
        keep = self.SMOOTHING * self.started.double()  # the first batch sets the average
        self.ratio = torch.where(heard, keep * self.ratio + (1 - keep) * ratio, self.ratio)
        self.dc = torch.where(heard, keep * self.dc + (1 - keep) * dc, self.dc)
        self.started = self.started | heard
        if judged:
            decay = self.rule.share_decay
            hits = {"collapse": ratio < self.rule.threshold, "explosion": ratio > self.rule.high,
                    "dc": dc > self.rule.dc_fraction}
            for name, hit in hits.items():
                self.shares[name] = torch.where(heard, decay * self.shares[name] + (1 - decay) * hit.double(),
                                                self.shares[name])

    def values(self) -> torch.Tensor:
        """What `read` returns, on the device (a monitor averages it over ranks first)."""
        return torch.stack([self.ratio, self.dc, *self.shares.values()])

    @staticmethod
    def as_dict(values: torch.Tensor) -> dict[str, float]:
        return dict(zip([TRAIN_RATIO, TRAIN_DC, *SHARES.values()], values.cpu().tolist(), strict=True))

    def read(self) -> dict[str, float]:
        return self.as_dict(self.values())

    def to(self, device: torch.device | str) -> StepAmplitude:
        self.ratio, self.dc, self.started = self.ratio.to(device), self.dc.to(device), self.started.to(device)
        self.shares = {k: v.to(device) for k, v in self.shares.items()}
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"ratio": float(self.ratio), "dc": float(self.dc), "started": bool(self.started),
                "shares": {k: float(v) for k, v in self.shares.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        device = self.ratio.device
        self.ratio = torch.tensor(state["ratio"], dtype=torch.float64, device=device)
        self.dc = torch.tensor(state["dc"], dtype=torch.float64, device=device)
        self.started = torch.tensor(state["started"], device=device)
        self.shares = {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in state["shares"].items()}


@dataclass
class _Streak:
    count: int = 0
    since: int | None = None

    def update(self, hit: bool, step: int) -> int:
        if hit:
            self.count += 1
            self.since = step if self.since is None else self.since
        else:
            self.count, self.since = 0, None
        return self.count


class AmplitudeTracker:
    """Feed it each validation's logged metrics (`observe`) and the per-step readings of logging
    steps (`steps`); it returns the new verdicts (each finding once per run). `stop` holds the
    first sustained verdict: the live monitor ends the run on it in `mode: stop`, a sweep prunes.

    `extra_layers`: layers between the quantizer and out_proj (final_conv, post_scale): a collapse
    with them present also gets the F4 verdict the reports reached."""

    def __init__(self, rule: AmplitudeRule | None = None, extra_layers: list[str] | tuple[str, ...] = (),
                 loss_keys: tuple[str, ...] = LOSS_KEYS):
        self.rule = rule or AmplitudeRule()
        self.extra_layers = list(extra_layers)
        self.loss_keys = tuple(loss_keys)
        self.first: dict[str, float] = {}
        self.best_mel: tuple[int, float] | None = None
        self.history: list[tuple[int, float]] = []  # (step, judged RMS ratio) at validations
        self.streaks = {name: _Streak() for name in ("collapse", "explosion", "dc", "divergence")}
        self.raised: dict[str, Verdict] = {}
        self.stop: Verdict | None = None
        self.collapsed_at_step: int | None = None

    # ------------------------------------------------------------------ validations
    def observe(self, step: int, metrics: Mapping[str, float]) -> list[Verdict]:
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        ratio_key = RMS_RATIO_NO_DC if RMS_RATIO_NO_DC in values else RMS_RATIO
        ratio = values.get(ratio_key)
        if ratio is None:
            return []
        self._remember_first(values)
        if step <= 0:  # the validation before training: a baseline, not a verdict
            return []
        bad = [k for k in (ratio_key, MEL, DC_FRACTION) if k in values and not math.isfinite(values[k])]
        if bad:
            return self._raise("divergence", Verdict(
                "F3", step, f"training diverged: {', '.join(f'{k} = {values[k]}' for k in bad)} at validation",
                DIVERGENCE_REMEDY, "amplitude.divergence", bad[0], {k: values[k] for k in bad}), sustained=True)
        self.history.append((step, ratio))
        name = _ratio_name(ratio_key)
        found: list[Verdict] = []
        streak = self.streaks["collapse"]
        if streak.update(ratio < self.rule.threshold, step) >= self.rule.patience:
            found += self._collapse(step, values, ratio_key, f"{name} {ratio:.3g} (below {self.rule.threshold:g} "
                                    f"for {streak.count} validations since step {streak.since}; "
                                    f"{self.first.get(ratio_key, math.nan):.3g} at the first)")
        streak = self.streaks["explosion"]
        if streak.update(ratio > self.rule.high, step) >= self.rule.patience:
            found += self._explosion(step, values, ratio_key, f"{name} {ratio:.3g} (above {self.rule.high:g} for "
                                     f"{streak.count} validations since step {streak.since}; "
                                     f"{self.first.get(ratio_key, math.nan):.3g} at the first)", ratio, True)
        elif ratio > self.rule.severe_high:
            found += self._explosion(step, values, ratio_key, f"{name} {ratio:.3g} at this validation (above "
                                     f"{self.rule.severe_high:g})", ratio, False)
        share = values.get(DC_FRACTION)
        streak = self.streaks["dc"]
        if share is not None and streak.update(share > self.rule.dc_fraction, step) >= self.rule.patience:
            found += self._dc(step, values, share, f"for {streak.count} validations since step {streak.since}")
        found += self._divergence(step, values)
        return found

    # ------------------------------------------------------------------ training steps
    def steps(self, step: int, logged: Mapping[str, float]) -> list[Verdict]:
        """A logging step's reading of `StepAmplitude` (the `train/audio/*`, `train/health/*` values)."""
        if step < self.rule.warmup_steps or TRAIN_RATIO not in logged:
            return []
        ratio, found = logged[TRAIN_RATIO], []
        if not math.isfinite(ratio):
            return self._raise("divergence", Verdict(
                "F3", step, f"training diverged: the output level of training batches is {ratio}",
                DIVERGENCE_REMEDY, "amplitude.divergence", TRAIN_RATIO, {"rms_ratio": ratio}), sustained=True)
        self.first.setdefault(TRAIN_RATIO, ratio)
        recent = f"for most of the last {self.rule.patience_steps} steps"
        if logged.get(SHARES["collapse"], 0.0) >= SURE:
            found += self._collapse(step, logged, TRAIN_RATIO, f"RMS ratio of training batches {ratio:.3g} (below "
                                    f"{self.rule.threshold:g} {recent}; {self.first[TRAIN_RATIO]:.3g} at step "
                                    f"{self.rule.warmup_steps})")
        if logged.get(SHARES["explosion"], 0.0) >= SURE:
            found += self._explosion(step, logged, TRAIN_RATIO, f"RMS ratio of training batches {ratio:.3g} (above "
                                     f"{self.rule.high:g} {recent})", ratio, True)
        elif ratio > self.rule.severe_high:
            found += self._explosion(step, logged, TRAIN_RATIO, f"RMS ratio of training batches {ratio:.3g} "
                                     f"(above {self.rule.severe_high:g})", ratio, False)
        if logged.get(SHARES["dc"], 0.0) >= SURE:
            found += self._dc(step, {DC_FRACTION: logged.get(TRAIN_DC, math.nan)}, logged.get(TRAIN_DC, math.nan),
                              f"in training batches {recent}")
        return found

    # ------------------------------------------------------------------ verdicts
    def _collapse(self, step, values, key, evidence: str) -> list[Verdict]:
        loss_key = next((k for k in self.loss_keys if k in values and self.first.get(k)), None)
        if loss_key is not None:
            change = 100.0 * (values[loss_key] - self.first[loss_key]) / abs(self.first[loss_key])
            evidence += f" while {loss_key} {'fell' if change < 0 else 'rose'} {abs(change):.0f}% since the first validation"
        verdicts = self._raise("collapse", Verdict(
            "F3", step, "amplitude collapse: " + evidence, COLLAPSE_REMEDY, "amplitude.collapse", key,
            {"rms_ratio": values.get(key)}), sustained=True)
        if verdicts:
            self.collapsed_at_step = step
            if self.extra_layers:
                moved = [f"{name} {_change(self.first.get(NORM_KEY.format(name)), values.get(NORM_KEY.format(name)))}"
                         for name in ("final_conv", "out_proj") if NORM_KEY.format(name) in values]
                verdicts += self._raise("structure", Verdict(
                    "F4", step, f"the collapse happened with {', '.join(self.extra_layers)} between the quantizer and "
                    "out_proj" + (f" (weight norms since the first validation: {', '.join(moved)})" if moved else ""),
                    STRUCTURE_REMEDY, "amplitude.structure", "structure", {"layers": list(self.extra_layers)}))
        return verdicts

    def _explosion(self, step, values, key, evidence: str, ratio: float, sustained: bool) -> list[Verdict]:
        if MEL in values and MEL in self.first:
            evidence += f"; mel distance {self.first[MEL]:.3g} at the first validation, {values[MEL]:.3g} now"
        return self._raise("explosion", Verdict(
            "F3", step, "amplitude explosion: " + evidence, EXPLOSION_REMEDY, "amplitude.explosion", key,
            {"rms_ratio": ratio}), sustained=sustained)

    def _dc(self, step, values, share: float, how_long: str) -> list[Verdict]:
        parts = [f"{100 * share:.0f}% of the output's energy is a constant offset"]
        if DC_OFFSET in values:
            parts[0] += f" (DC {values[DC_OFFSET]:.3g})"
        if RMS_RATIO in values and RMS_RATIO_NO_DC in values:
            parts.append(f"RMS ratio {values[RMS_RATIO]:.3g} with the DC, {values[RMS_RATIO_NO_DC]:.3g} without")
        if CORRELATION in values:
            parts.append(f"correlation with the input {values[CORRELATION]:.2f}")
        return self._raise("dc", Verdict(
            "F3", step, f"DC offset dominates the output {how_long}: " + "; ".join(parts), DC_REMEDY,
            "amplitude.dc_offset", DC_FRACTION, {"dc_fraction": share}), sustained=True)

    def _divergence(self, step, values) -> list[Verdict]:
        mel = values.get(MEL)
        if mel is None:
            return []
        streak, best = self.streaks["divergence"], self.best_mel
        count = streak.update(best is not None and mel > self.rule.divergence_factor * best[1], step)
        if best is None or mel < best[1]:
            self.best_mel = (step, mel)
        if count < self.rule.patience:
            return []
        return self._raise("divergence", Verdict(
            "F3", step, f"training diverging: mel distance {mel:.3g}, {mel / best[1]:.1f}x its best {best[1]:.3g} "
            f"(step {best[0]}), above {self.rule.divergence_factor:g}x for {count} validations since step "
            f"{streak.since}", DIVERGENCE_REMEDY, "amplitude.divergence", MEL,
            {"mel": mel, "best_mel": best[1], "best_step": best[0]}), sustained=True)

    def diverged(self, step: int, error: str, last: Mapping[str, float], lr: float | None) -> list[Verdict]:
        """The run raised on non-finite values (NaN loss, a quantizer refusing NaN input): name the
        divergence with the last finite loss and output scale and the learning rate."""
        parts = [f"{k} {float(v):.3g}" for k, v in last.items() if v is not None and math.isfinite(float(v))]
        where = f" (last finite: {', '.join(parts)})" if parts else ""
        at_lr = f" at learning rate {lr:g}" if lr is not None else ""
        return self._raise("non_finite", Verdict(
            "F3", step, f"training diverged{at_lr}: {error}{where}", DIVERGENCE_REMEDY, "training.non_finite",
            "train/loss/total", {"lr": lr, **{k: float(v) for k, v in last.items() if v is not None}}),
            sustained=True)

    def _remember_first(self, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            if math.isfinite(value):
                self.first.setdefault(key, value)

    def _raise(self, key: str, verdict: Verdict, sustained: bool = False) -> list[Verdict]:
        """Each finding is raised once; a finding first raised at once (a single extreme value) and
        then sustained becomes the run's `stop` reason without being raised again."""
        first = self.raised.get(key)
        if sustained and self.stop is None:
            self.stop = first or verdict
        if first is not None:
            return []
        self.raised[key] = verdict
        return [verdict]

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"first": dict(self.first), "best_mel": self.best_mel,
                "raised": {k: v.to_dict() for k, v in self.raised.items()},
                "streaks": {k: [s.count, s.since] for k, s in self.streaks.items()}, "history": list(self.history),
                "stop": self.stop.to_dict() if self.stop else None, "collapsed_at_step": self.collapsed_at_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.first = dict(state.get("first", {}))
        best = state.get("best_mel")
        self.best_mel = tuple(best) if best else None
        raised = state.get("raised", {})
        self.raised = {k: Verdict.from_dict(v) for k, v in raised.items()} if isinstance(raised, dict) else {}
        self.history = [tuple(h) for h in state.get("history", [])]
        for key, (count, since) in state.get("streaks", {}).items():
            self.streaks[key] = _Streak(count, since)
        self.stop = Verdict.from_dict(state["stop"]) if state.get("stop") else None
        self.collapsed_at_step = state.get("collapsed_at_step")


def judge_snapshot(metrics: Mapping[str, float], step: int = 0, rule: AmplitudeRule | None = None) -> list[Verdict]:
    """One measurement (`codec eval` on a folder): the same bounds without the patience a run has."""
    return AmplitudeTracker(replace(rule or AmplitudeRule(), patience=1)).observe(max(step, 1), metrics)


def _ratio_name(key: str) -> str:
    return "RMS ratio without DC" if key == RMS_RATIO_NO_DC else "RMS ratio"


def _change(first: float | None, now: float | None) -> str:
    if not first or now is None:
        return "n/a"
    return f"{100.0 * (now - first) / abs(first):+.0f}%"
