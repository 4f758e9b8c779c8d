"""Codebook monitor (F1, F2): feeds what the quantizers did to the usage and codebook rules.

The rules live in `codec.diagnostics.usage` (per-step and per-window usage, validation usage) and
`codec.diagnostics.codebook` (drift, dead codes); this callback only observes and logs:

- every training step, on the device and without a host sync: each active level's histogram goes
  into the window's sum and into the per-step usage state (`StepUsage`);
- every `check_every_n_steps` (default: the trainer's `log_every_n_steps`): the per-step view
  `train/codebook/q{i}/{step_perplexity, low_usage_share, step_codes_used, step_rows,
  best_step_perplexity}`, judged by `UsageTracker.steps`;
- every `every_n_steps`: the window `train/codebook/q{i}/{window_perplexity, window_codes_used}`,
  dead codes, norms, value range, input scale, EMA-usage perplexity, distance from init (and
  usage histograms to W&B), judged by `UsageTracker.window` and `judge_level`;
- at each validation: the eval-mode histograms `val/codebook/q{i}/{perplexity, rows}`, judged by
  `UsageTracker.validation`.
Levels are judged only after their activation (progressive RVQ) plus the rule's grace.
"""

from __future__ import annotations

import lightning as L
import torch

from codec.callbacks.discovery import active_levels, find_quantizers
from codec.callbacks.distributed import reduce_mean, reduce_sum
from codec.callbacks.log_now import log_now
from codec.callbacks.verdict import KeepsVerdicts
from codec.diagnostics.codebook import CodebookRule, judge_level, level_state, usage_perplexity
from codec.diagnostics.usage import StepUsage, UsageRule, UsageTracker, perplexities
from codec.quantize.stats import perplexity
from codec.validation_schedule import is_start_validation

_USAGE, _BOOK = UsageRule(), CodebookRule()


class CodebookMonitor(KeepsVerdicts, L.Callback):
    """Args (thresholds: `codec.diagnostics.usage.UsageRule` and `codec.diagnostics.codebook.CodebookRule`):
    every_n_steps: training steps per window report.
    check_every_n_steps: steps between two reads of the per-step usage (default: log_every_n_steps).
    min_codes_used: an active level using fewer distinct codes in a window is flagged (F1 at 0).
    floor_perplexity, capacity_fraction, drop_fraction: when a step's usage counts as low.
    patience_steps: low steps in a row that raise the per-step verdict.
    grace_steps: steps after a level's activation before it is judged.
    drift_factor: codebook values beyond this x the level's input scale are drift (F2), when
        those codes take at least drift_min_usage of the level's EMA usage (one outlier's code is not).
    max_dead_fraction, dead_usage_fraction: dead codes (usage below dead_usage_fraction x the mean).
    min_trained_steps: training steps before drift and dead codes are judged.
    log_histograms: send usage histograms to W&B (when a W&B logger is attached).
    """

    def __init__(self, every_n_steps: int = 250, check_every_n_steps: int | None = None,
                 min_codes_used: int = _USAGE.min_codes_used, floor_perplexity: float = _USAGE.floor_perplexity,
                 capacity_fraction: float = _USAGE.capacity_fraction, drop_fraction: float = _USAGE.drop_fraction,
                 patience_steps: int = _USAGE.patience_steps, grace_steps: int = _USAGE.grace_steps,
                 drift_factor: float = _BOOK.drift_factor, drift_min_usage: float = _BOOK.drift_min_usage,
                 max_dead_fraction: float = _BOOK.max_dead_fraction,
                 dead_usage_fraction: float = _BOOK.dead_usage_fraction,
                 min_trained_steps: int = _BOOK.min_trained_steps, log_histograms: bool = True):
        if every_n_steps <= 0:
            raise ValueError(f"CodebookMonitor.every_n_steps must be positive, got {every_n_steps}")
        if check_every_n_steps is not None and check_every_n_steps <= 0:
            raise ValueError(f"CodebookMonitor.check_every_n_steps must be positive, got {check_every_n_steps}")
        self.every_n_steps = every_n_steps
        self.check_every_n_steps = check_every_n_steps
        self.usage_rule = UsageRule(min_codes_used, floor_perplexity, capacity_fraction, drop_fraction,
                                    patience_steps, grace_steps)
        self.codebook_rule = CodebookRule(drift_factor=drift_factor, drift_min_usage=drift_min_usage,
                                          max_dead_fraction=max_dead_fraction, dead_usage_fraction=dead_usage_fraction,
                                          min_trained_steps=min_trained_steps)
        self.log_histograms = log_histograms
        self._start_verdicts()
        self._quantizers: list = []
        self._trackers: dict[str, UsageTracker] = {}
        self._steps: dict[str, StepUsage] = {}
        self._window: dict[str, torch.Tensor] = {}      # (levels, K) histogram sums of the window
        self._val: dict[str, torch.Tensor] = {}         # (levels, K) eval-mode histograms of a validation
        self._activated: dict[str, dict[int, int]] = {}  # level -> first step it trained in
        self._active_now: dict[str, int] = {}
        self._window_start = 1   # first step of the current window
        self._last_step = -1     # once per step under gradient accumulation

    # ------------------------------------------------------------------ gathering
    def setup(self, trainer, pl_module, stage: str) -> None:
        self._quantizers = find_quantizers(pl_module)  # once, not a module walk every step
        named = len(self._quantizers) > 1
        for name, rvq in self._quantizers:
            self._trackers.setdefault(name, UsageTracker(self.usage_rule, rvq.codebook_size, name if named else ""))
            self._activated.setdefault(name, {})

    def on_train_start(self, trainer, pl_module) -> None:
        self._window_start = trainer.global_step + 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # The count this batch's forward uses: ProgressiveRVQ changes it after the step, before us.
        self._active_now = {name: active_levels(rvq) for name, rvq in self._quantizers}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # this batch was step `step - 1`; it counts as `step` here, like the logs
        for name, rvq in self._quantizers:
            histograms = [level.last_histogram for level in rvq.levels[: self._active_now.get(name, 0)]]
            if not histograms or any(h is None for h in histograms):
                continue
            counts = torch.stack(histograms)
            a = counts.shape[0]
            activated = self._activated[name]
            for level in range(a):
                activated.setdefault(level, step)
            window = self._window.get(name)
            if window is None:
                window = self._window[name] = torch.zeros(rvq.num_quantizers, rvq.codebook_size,
                                                          dtype=counts.dtype, device=counts.device)
            window[:a] += counts
            usage = self._steps.get(name)
            if usage is None:
                usage = self._steps[name] = StepUsage(self.usage_rule, rvq.num_quantizers, rvq.codebook_size,
                                                      counts.device)
            judged = sum(1 for level in range(a) if activated[level] + self.usage_rule.grace_steps <= step)
            usage.update(counts, judged)
        if step == self._last_step:
            return
        self._last_step = step
        check_every = self.check_every_n_steps or max(1, trainer.log_every_n_steps)
        if step % check_every == 0:
            self.check_steps(trainer, step)
        if step % self.every_n_steps == 0:
            self.report(trainer, pl_module)

    # ------------------------------------------------------------------ per step
    def check_steps(self, trainer, step: int) -> dict[str, float]:
        """Log the per-step usage of every active level and judge it."""
        logs: dict[str, float] = {}
        for name, rvq in self._quantizers:
            usage = self._steps.get(name)
            if usage is None:
                continue
            active = self._active_now.get(name, active_levels(rvq))
            prefix = self._prefix(name)
            for level, values in enumerate(StepUsage.as_dicts(reduce_mean(trainer, usage.values(active)))):
                logs.update({f"train/codebook/{prefix}q{level}/{k}": v for k, v in values.items()})
                self.record(self._trackers[name].steps(step, level, values))
        log_now(trainer, logs)
        return logs

    # ------------------------------------------------------------------ windows
    def report(self, trainer, pl_module=None) -> dict[str, float]:
        """Log the window's statistics, judge them, start a new window. Returns what was logged."""
        step = trainer.global_step
        logs: dict[str, float] = {}
        histograms = {}
        for name, rvq in self._quantizers:
            prefix = self._prefix(name)
            active = active_levels(rvq)
            window = self._window.get(name)
            if window is not None:  # every rank's window (a copy: the device sum is zeroed below)
                window = reduce_sum(trainer, window).cpu().clone()
            tracker = self._trackers[name]
            for s in rvq.level_stats():
                if not s.active:
                    continue
                key = f"train/codebook/{prefix}q{s.level}"
                level = rvq.levels[s.level]
                counts = window[s.level] if window is not None else torch.zeros(rvq.codebook_size, dtype=torch.long)
                used = int((counts > 0).sum())
                logs[f"{key}/window_perplexity"] = perplexity(counts)
                logs[f"{key}/window_codes_used"] = float(used)
                activated = self._activated[name].get(s.level)
                if activated is not None:
                    logs[f"{key}/active_since"] = float(activated)
                logs[f"{key}/trained_steps"] = float(s.trained_steps)
                if activated is not None and activated <= self._window_start:  # active the whole window
                    self.record(tracker.window(step, s.level, used, step - self._window_start + 1, active))
                state = level_state(s.level, True, level.codebook, level.cluster_size, s.initialized,
                                    s.trained_steps, level.input_scale,
                                    level.dead_code_threshold > 0 and level.init == "kmeans", self.codebook_rule,
                                    getattr(s, "rejected_updates", 0))
                logs.update({f"{key}/{k}": v for k, v in s.scalars().items()
                             if k not in ("perplexity", "codes_used", "dead_codes")})
                logs[f"{key}/dead_codes"] = float(state.dead_codes)
                logs[f"{key}/usage_perplexity"] = usage_perplexity(level.cluster_size)
                if state.input_scale is not None:
                    logs[f"{key}/input_scale"] = state.input_scale
                if state.drifted_usage is not None:
                    logs[f"{key}/drifted_usage"] = state.drifted_usage
                self.record(judge_level(state, step, self.codebook_rule, tracker.quantizer))
                if used:
                    histograms[f"{key}/usage"] = counts
            if name in self._window:
                self._window[name].zero_()
            logs[f"train/codebook/{prefix}active_levels"] = float(active)
        logs["train/health/codebook_warnings"] = float(len(self.verdicts))
        self._window_start = step + 1
        log_now(trainer, logs)
        if self.log_histograms and histograms:
            _log_wandb_histograms(trainer, histograms, step)
        return logs

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking:
            return
        for name, rvq in self._quantizers:
            histograms = [level.last_histogram for level in rvq.levels[: active_levels(rvq)]]
            if not histograms or any(h is None for h in histograms):
                continue
            counts = torch.stack(histograms)
            if name not in self._val or self._val[name].shape != counts.shape:
                self._val[name] = counts.clone()
            else:
                self._val[name] += counts

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self._val:
            return
        step = trainer.global_step
        opening = is_start_validation(trainer)  # a baseline: logged, not judged
        logs = {}
        for name, counts in self._val.items():
            ppl, rows, _ = perplexities(reduce_sum(trainer, counts))
            prefix = self._prefix(name)
            tracker = self._trackers[name]
            for level, (p, n) in enumerate(zip(ppl.cpu().tolist(), rows.cpu().tolist(), strict=True)):
                logs[f"val/codebook/{prefix}q{level}/perplexity"] = p
                logs[f"val/codebook/{prefix}q{level}/rows"] = n
                activated = self._activated.get(name, {}).get(level)
                if not opening and step > 0 and activated is not None and \
                        activated + self.usage_rule.grace_steps <= step:
                    self.record(tracker.validation(step, level, p, n))
        self._val = {}
        log_now(trainer, logs)

    # ------------------------------------------------------------------ state
    def _prefix(self, name: str) -> str:
        """Metric prefix of a quantizer: none when the module has one (the common case)."""
        return "" if len(self._quantizers) <= 1 else f"{name}/"

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["activated"] = {name: dict(levels) for name, levels in self._activated.items()}
        state["step_usage"] = {name: usage.state_dict() for name, usage in self._steps.items()}
        state["raised"] = {name: sorted(t.raised) for name, t in self._trackers.items()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._activated = {name: {int(k): int(v) for k, v in levels.items()}
                           for name, levels in state_dict.get("activated", {}).items()}
        self._pending_usage = state_dict.get("step_usage", {})
        self._pending_raised = state_dict.get("raised", {})

    def on_fit_start(self, trainer, pl_module) -> None:
        # Restore the per-step state once the quantizers (and their device) are known.
        for name, rvq in self._quantizers:
            pending = getattr(self, "_pending_usage", {}).get(name)
            if pending is not None:
                usage = StepUsage(self.usage_rule, rvq.num_quantizers, rvq.codebook_size, rvq.num_active.device)
                usage.load_state_dict(pending)
                self._steps[name] = usage
            raised = getattr(self, "_pending_raised", {}).get(name)
            if raised is not None:
                self._trackers[name].raised = {tuple(key) for key in raised}
        self._pending_usage, self._pending_raised = {}, {}


def _log_wandb_histograms(trainer, histograms: dict[str, torch.Tensor], step: int) -> None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            data = {key: wandb.Histogram(np_histogram=(hist.cpu().float().numpy(),
                                                       torch.arange(hist.numel() + 1).numpy()))
                    for key, hist in histograms.items()}
            logger.experiment.log({**data, "trainer/global_step": step})
