"""Codebook monitor (F2, and the F1 symptom "Q2: 0/1024 used" while 3 levels were active).

Every `every_n_steps` training steps, per quantizer and level: perplexity and codes used over the
window (histograms summed since the last report, not just the last batch), dead codes, codebook norm
and value statistics, and distance from the initial codebook; usage histograms go to W&B when a
W&B logger is attached. Warnings, each also a metric and a verdict in the run summary:
- an *active* level that used fewer than `min_codes_used` codes in the window;
- a codebook whose values reach far beyond its inputs (3x their largest |value|): the reports'
  values of +-72 where +-4 was normal;
- a level whose dead codes exceed `max_dead_fraction` of the codebook (the reports' 867/1024).
"""

from __future__ import annotations

import lightning as L
import torch

from codec.callbacks.discovery import find_quantizers
from codec.callbacks.log_now import log_now
from codec.callbacks.verdict import KeepsVerdicts, Verdict
from codec.quantize.stats import perplexity


class CodebookMonitor(KeepsVerdicts, L.Callback):
    """Args:
    every_n_steps: training steps per report window.
    min_codes_used: an active level using fewer distinct codes than this in a window is flagged.
    drift_factor: flag a codebook whose largest |value| exceeds this many times the largest
        |value| of the inputs its level saw in the window.
    max_dead_fraction: flag a level with more than this fraction of dead codes.
    log_histograms: send usage histograms to W&B (when a W&B logger is attached).
    """

    def __init__(self, every_n_steps: int = 250, min_codes_used: int = 2, drift_factor: float = 3.0,
                 max_dead_fraction: float = 0.75, log_histograms: bool = True):
        if every_n_steps <= 0:
            raise ValueError(f"CodebookMonitor.every_n_steps must be positive, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.min_codes_used = min_codes_used
        self.drift_factor = drift_factor
        self.max_dead_fraction = max_dead_fraction
        self.log_histograms = log_histograms
        self._start_verdicts()
        self._window: dict[tuple[str, int], torch.Tensor] = {}
        self._input_absmax: dict[tuple[str, int], torch.Tensor] = {}  # largest |input| per level in the window
        self._last_report_step = -1
        self._named = False  # several quantizers: name them in messages

    # --------------------------------------------------------------- gathering
    def setup(self, trainer, pl_module, stage: str) -> None:
        self._quantizers = find_quantizers(pl_module)  # once, not a module walk every step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        quantizers = getattr(self, "_quantizers", None) or find_quantizers(pl_module)
        for name, rvq in quantizers:
            for i, level in enumerate(rvq.levels[: int(rvq.num_active)]):
                if level.last_histogram is None:
                    continue
                key = (name, i)
                hist = level.last_histogram.detach()
                self._window[key] = hist.clone() if key not in self._window else self._window[key] + hist
                if level.last_input_absmax is not None:  # tensors, so no device sync per step
                    seen = self._input_absmax.get(key)
                    self._input_absmax[key] = (level.last_input_absmax if seen is None
                                               else torch.maximum(seen, level.last_input_absmax))
        step = trainer.global_step
        if step % self.every_n_steps == 0 and step != self._last_report_step:  # once per step under accumulation
            self._last_report_step = step
            self.report(trainer, pl_module, quantizers)

    # --------------------------------------------------------------- reporting
    def report(self, trainer, pl_module, quantizers=None) -> dict[str, float]:
        """Log the window's statistics, check them, start a new window. Returns what was logged."""
        quantizers = find_quantizers(pl_module) if quantizers is None else quantizers
        step = trainer.global_step
        self._named = len(quantizers) > 1
        logs: dict[str, float] = {}
        histograms = {}
        for name, rvq in quantizers:
            prefix = _prefix(name, len(quantizers))
            active = int(rvq.num_active)
            for s in rvq.level_stats():
                key = f"train/codebook/{prefix}q{s.level}"
                window = self._window.get((name, s.level))
                if s.active:
                    used = 0 if window is None else int((window > 0).sum())
                    logs[f"{key}/window_perplexity"] = perplexity(window) if window is not None else 0.0
                    logs[f"{key}/window_codes_used"] = float(used)
                    self._check_usage(name, s.level, active, used, rvq.codebook_size, step)
                    if window is not None:
                        histograms[f"{key}/usage"] = window
                for field in ("dead_codes", "norm_mean", "norm_std", "norm_min", "norm_max",
                              "value_std", "value_min", "value_max", "distance_from_init"):
                    logs[f"{key}/{field}"] = float(s.scalars()[field])
                level = rvq.levels[s.level]
                if s.active and s.initialized:
                    self._check_drift(name, s.level, level, self._input_absmax.get((name, s.level)), step)
                    self._check_dead(name, s.level, level, s.dead_codes, rvq.codebook_size, step)
        logs["train/health/codebook_warnings"] = float(len(self.verdicts))
        self._window, self._input_absmax = {}, {}
        log_now(trainer, logs)
        if self.log_histograms and histograms:
            _log_wandb_histograms(trainer, histograms, step)
        return logs

    def _check_usage(self, name: str, level: int, active: int, used: int, size: int, step: int) -> None:
        if used >= self.min_codes_used:
            return
        self._flag("usage", name, level, Verdict(
            "F2" if used else "F1", step,
            f"{self._label(name, level)} used {used}/{size} codes in the last {self.every_n_steps} steps "
            f"while {active} levels are active",
            "check that this level receives inputs (schedule, dropout); re-seed dead codes "
            "(dead_code_threshold) and initialise from data (init: kmeans)",
        ))

    def _check_drift(self, name: str, level: int, codebook, input_absmax, step: int) -> None:
        # Against the largest |value| of the inputs this level saw in the window: an EMA codebook
        # is an average of inputs, so values far beyond them are stale codes from a time the
        # encoder output was larger, or a codebook (gradient update) that ran away.
        if input_absmax is None:
            return
        scale = float(input_absmax)
        values = codebook.codebook.detach()
        low, high = float(values.min()), float(values.max())
        if max(abs(low), abs(high)) <= self.drift_factor * max(scale, 1e-12):
            return
        self._flag("drift", name, level, Verdict(
            "F2", step,
            f"{self._label(name, level)} codebook values span [{low:.1f}, {high:.1f}] while its inputs "
            f"stayed within +-{scale:.2g} over the last {self.every_n_steps} steps",
            "normalise the quantizer input (zscore / l2) or lower the EMA decay; re-seed stale codes "
            "(dead_code_threshold); check for a learnable scale compensating downstream (post_scale)",
        ))

    def _check_dead(self, name: str, level: int, codebook, dead: int, size: int, step: int) -> None:
        if dead <= self.max_dead_fraction * size:
            return
        if codebook.dead_code_threshold > 0 and codebook.init == "kmeans":
            remedy = ("k-means init and re-seeding are already on, so this level's inputs do not spread over "
                      f"{size} codes: try a smaller codebook_size, fewer levels or larger batches")
        else:
            remedy = "initialise from data (init: kmeans) and re-seed dead codes (dead_code_threshold > 0)"
        self._flag("dead", name, level, Verdict(
            "F2", step, f"{self._label(name, level)} has {dead}/{size} dead codes", remedy))

    def _label(self, name: str, level: int) -> str:
        return f"{name} Q{level}" if self._named else f"Q{level}"

    def _flag(self, kind: str, name: str, level: int, verdict: Verdict) -> None:
        self.raise_once((kind, name, level), verdict)


def _prefix(name: str, count: int) -> str:
    """Metric prefix of a quantizer: none when the module has one (the common case)."""
    return "" if count == 1 else f"{name}/"


def _log_wandb_histograms(trainer, histograms: dict[str, torch.Tensor], step: int) -> None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            data = {key: wandb.Histogram(np_histogram=(hist.cpu().float().numpy(),
                                                       torch.arange(hist.numel() + 1).numpy()))
                    for key, hist in histograms.items()}
            logger.experiment.log({**data, "trainer/global_step": step})
