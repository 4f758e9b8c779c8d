"""Amplitude and parameter-norm monitor (F3 amplitude collapse, F4 layer structure).

In the reports every loss went down while the output RMS fell 98 %: the losses were nearly
scale-invariant. This monitor reads `val/audio/rms_ratio` (output RMS / target RMS, logged by the
module at each validation) and, when it stays below `threshold` for `patience` validations in a
row, declares collapse: a warning, a metric, a verdict with the evidence (how far the RMS fell while
the watched loss fell too, how the watched parameter norms moved), and, with mode="stop", the end
of the run. A sweep prunes the trial on the same signal (`collapsed_at_step`).

It also logs the weight and bias norms of the named layers (`out_proj`, `final_conv` by default) as
`train/params/<name>/{weight,bias}_norm`, the evidence of F4 (out_proj norm -73 % in phase_2a).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning as L
import torch
from torch import nn

from codec.callbacks.discovery import find_quantizers
from codec.callbacks.log_now import log_now
from codec.callbacks.verdict import Verdict

MODES = ("warn", "stop")
AMPLITUDE_REMEDY = ("try phase_b (L2/cosine codes, pre_rvq_conv -> RVQ -> out_proj, no RMS losses) or an "
                    "absolute-RMS loss; compare the loss and structure ablations (sweeps/loss.yaml, "
                    "sweeps/structure.yaml)")
STRUCTURE_REMEDY = ("drop post_scale and final_conv (structure.final_conv: none, quantizer.post_scale: false): "
                    "phase_1's rvq -> out_proj kept its amplitude in the reports")


class AmplitudeMonitor(L.Callback):
    """Args:
    threshold: RMS ratio (output / target) below which a validation counts as collapsed.
    patience: consecutive collapsed validations before collapse is declared.
    mode: "warn" (verdict and metric only) or "stop" (also end the run).
    metric: the logged RMS-ratio metric to read.
    loss_metric: a logged loss whose fall is quoted as evidence (the first of these that exists).
    parameters: layer names whose weight/bias norms are tracked (matched as the last component of a
        module's qualified name; the shallowest match wins, so `out_proj` is the codec's, not a
        codebook projection's).
    """

    def __init__(self, threshold: float = 0.1, patience: int = 3, mode: str = "stop",
                 metric: str = "val/audio/rms_ratio",
                 loss_metric: tuple[str, ...] | list[str] = ("train/loss/stft", "train/loss/total"),
                 parameters: tuple[str, ...] | list[str] = ("out_proj", "final_conv")):
        if mode not in MODES:
            raise ValueError(f"AmplitudeMonitor.mode must be one of {MODES}, got {mode!r}")
        if patience < 1:
            raise ValueError(f"AmplitudeMonitor.patience must be >= 1, got {patience}")
        self.threshold, self.patience, self.mode = threshold, patience, mode
        self.metric = metric
        self.loss_metric = list(loss_metric)
        self.parameters = list(parameters)
        self.collapsed_at_step: int | None = None
        self.verdicts: list[Verdict] = []
        self.below_since: int | None = None
        self.below_count = 0
        self.first: dict[str, float] = {}  # first seen value of the ratio, the loss and the norms
        self.history: list[tuple[int, float]] = []

    # ------------------------------------------------------------------ checks
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        norms = self.parameter_norms(pl_module)
        log_now(trainer, norms)
        ratio = _metric(trainer, self.metric)
        if ratio is None:
            return
        step = trainer.global_step
        loss_key, loss = self._loss(trainer)
        for key, value in [(self.metric, ratio), (loss_key, loss), *norms.items()]:
            if key is not None and value is not None:
                self.first.setdefault(key, value)
        self.history.append((step, ratio))
        if ratio < self.threshold:
            self.below_count += 1
            self.below_since = step if self.below_since is None else self.below_since
        else:
            self.below_count, self.below_since = 0, None
        log_now(trainer, {"val/health/rms_collapse_count": float(self.below_count),
                          "val/health/amplitude_collapsed": float(self.collapsed_at_step is not None)})
        if self.below_count >= self.patience and self.collapsed_at_step is None:
            self._declare(trainer, pl_module, step, ratio, loss_key, loss, norms)

    def _declare(self, trainer, pl_module, step, ratio, loss_key, loss, norms) -> None:
        self.collapsed_at_step = step
        evidence = [f"RMS ratio {ratio:.3g} (below {self.threshold:g} for {self.below_count} validations "
                    f"since step {self.below_since}; {self.first[self.metric]:.3g} at the first)"]
        if loss_key is not None and loss is not None and self.first.get(loss_key):
            change = 100.0 * (loss - self.first[loss_key]) / abs(self.first[loss_key])
            evidence.append(f"while {loss_key} {'fell' if change < 0 else 'rose'} {abs(change):.0f}% "
                            "since the first validation")
        self.verdicts.append(Verdict("F3", step, "amplitude collapse: " + " ".join(evidence), AMPLITUDE_REMEDY))
        extra_layers = self._extra_layers(pl_module)
        if extra_layers:
            moved = [f"{k.split('/')[2]} {_change(self.first.get(k), v)}" for k, v in norms.items()
                     if k.endswith("weight_norm") and self.first.get(k)]
            self.verdicts.append(Verdict(
                "F4", step,
                f"the collapse happened with {', '.join(extra_layers)} between the quantizer and out_proj"
                + (f" (weight norms since the first validation: {', '.join(moved)})" if moved else ""),
                STRUCTURE_REMEDY))
        for verdict in self.verdicts[-2:] if extra_layers else self.verdicts[-1:]:
            warnings.warn(verdict.line(), stacklevel=2)
        log_now(trainer, {"val/health/amplitude_collapsed": 1.0})
        if self.mode == "stop":
            trainer.should_stop = True

    def _loss(self, trainer) -> tuple[str | None, float | None]:
        for key in self.loss_metric:
            value = _metric(trainer, key)
            if value is not None:
                return key, value
        return None, None

    # --------------------------------------------------------- parameter norms
    def tracked_modules(self, pl_module: nn.Module) -> dict[str, nn.Module]:
        found: dict[str, tuple[int, nn.Module]] = {}
        for qualified, module in pl_module.named_modules():
            last = qualified.rsplit(".", 1)[-1]
            if last in self.parameters and not isinstance(module, nn.Identity):
                depth = qualified.count(".")
                if last not in found or depth < found[last][0]:
                    found[last] = (depth, module)
        return {name: module for name, (_, module) in found.items()}

    @torch.no_grad()
    def parameter_norms(self, pl_module: nn.Module) -> dict[str, float]:
        logs = {}
        for name, module in self.tracked_modules(pl_module).items():
            for kind in ("weight", "bias"):
                param = getattr(module, kind, None)
                if isinstance(param, torch.Tensor):
                    logs[f"train/params/{name}/{kind}_norm"] = float(param.detach().float().norm())
        return logs

    def _extra_layers(self, pl_module: nn.Module) -> list[str]:
        """The phase_a structure the reports blamed (F4): final_conv and/or post_scale present."""
        layers = [name for name in self.tracked_modules(pl_module) if name != "out_proj"]
        if any(rvq.post_scale is not None for _, rvq in find_quantizers(pl_module)):
            layers.append("post_scale")
        return layers

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"collapsed_at_step": self.collapsed_at_step, "below_since": self.below_since,
                "below_count": self.below_count, "first": dict(self.first),
                "verdicts": [v.to_dict() for v in self.verdicts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.collapsed_at_step = state_dict.get("collapsed_at_step")
        self.below_since = state_dict.get("below_since")
        self.below_count = state_dict.get("below_count", 0)
        self.first = dict(state_dict.get("first", {}))
        self.verdicts = [Verdict(**v) for v in state_dict.get("verdicts", [])]


def _metric(trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _change(first: float | None, now: float) -> str:
    if not first:
        return "n/a"
    return f"{100.0 * (now - first) / abs(first):+.0f}%"
