"""Amplitude monitor (F3, F4): feeds the output level to the rules of `codec.diagnostics.amplitude`.

The tracker judges the output level both ways (collapse below `threshold`, explosion above `high`
or `severe_high`), a DC offset that dominates the output, and divergence (mel distance well above
its best), from each validation's metrics and from every training batch of a `codec.model.Codec`
(its input and output audio, measured on the device by `StepAmplitude` and read on logging steps:
`train/audio/{rms_ratio,dc_fraction}`, `train/health/{rms_low,rms_high,dc}_share`). This callback
also logs the parameter norms it quotes as evidence
(`train/params/<name>/{weight,bias}_norm`, out_proj and final_conv by default: out_proj's norm
fell 73 % in phase_2a) and the `val/health/*` flags, and with `mode: stop` ends the run on the
first sustained verdict. A sweep prunes the trial on the same verdict (`stop_verdict`).

When a run raises on non-finite values (a NaN loss, the quantizer refusing NaN input), the
verdict names the divergence: the last finite loss and output scale, and the learning rate.
"""

from __future__ import annotations

import warnings
from collections import deque
from typing import Any

import lightning as L
import torch
from torch import nn

from codec.callbacks.discovery import find_quantizers
from codec.callbacks.distributed import any_rank, reduce_mean
from codec.callbacks.log_now import log_now
from codec.diagnostics.amplitude import AmplitudeRule, AmplitudeTracker, StepAmplitude
from codec.diagnostics.verdict import Verdict
from codec.validation_schedule import is_start_validation

MODES = ("warn", "stop")
_RULE = AmplitudeRule()
LOSS_KEY = "train/loss/total"


class AmplitudeMonitor(L.Callback):
    """Args (thresholds: `codec.diagnostics.amplitude.AmplitudeRule`):
    threshold: RMS ratio (output / target, without DC when logged) below which a validation is collapsed.
    high: RMS ratio above which a validation is exploded; severe_high: exploded at once.
    patience: validations in a row before collapse, explosion, DC or divergence is declared.
    dc_fraction: share of the output energy in its mean above which DC dominates.
    divergence_factor: mel distance above this multiple of its best is divergence.
    mode: "warn" (verdict and metric only) or "stop" (also end the run on a sustained verdict).
    parameters: layer names whose weight/bias norms are tracked (matched as the last component of a
        module's qualified name; the shallowest match wins, so `out_proj` is the codec's, not a
        codebook projection's).
    """

    def __init__(self, threshold: float = _RULE.threshold, high: float = _RULE.high,
                 severe_high: float = _RULE.severe_high, patience: int = _RULE.patience,
                 dc_fraction: float = _RULE.dc_fraction, divergence_factor: float = _RULE.divergence_factor,
                 patience_steps: int = _RULE.patience_steps, warmup_steps: int = _RULE.warmup_steps,
                 check_every_n_steps: int | None = None, mode: str = "stop",
                 parameters: tuple[str, ...] | list[str] = ("out_proj", "final_conv")):
        if mode not in MODES:
            raise ValueError(f"AmplitudeMonitor.mode must be one of {MODES}, got {mode!r}")
        self.rule = AmplitudeRule(threshold, high, severe_high, patience, dc_fraction, divergence_factor,
                                  patience_steps, warmup_steps)
        self.check_every_n_steps = check_every_n_steps
        self.mode = mode
        self.parameters = list(parameters)
        self.tracker = AmplitudeTracker(self.rule)
        self.verdicts: list[Verdict] = []
        self._recent: deque = deque(maxlen=8)  # (step, loss, output RMS ratio) tensors, read on failure
        self._step_amplitude: StepAmplitude | None = None
        self._last_ratio: torch.Tensor | None = None
        self._hooks: list = []
        self._step = 0

    @property
    def threshold(self) -> float:
        return self.rule.threshold

    @property
    def history(self) -> list[tuple[int, float]]:
        return self.tracker.history

    @property
    def collapsed_at_step(self) -> int | None:
        return self.tracker.collapsed_at_step

    @property
    def stop_verdict(self) -> Verdict | None:
        """The first sustained verdict (collapse, explosion, DC, divergence): what ends or prunes a run."""
        return self.tracker.stop

    # ------------------------------------------------------------------ setup
    def setup(self, trainer, pl_module, stage: str) -> None:
        from codec.model import Codec

        self.tracker.extra_layers = self._extra_layers(pl_module)
        if not self._hooks:  # every training forward of a codec: its input and output audio
            self._hooks = [m.register_forward_hook(self._measure) for m in pl_module.modules() if isinstance(m, Codec)]

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _measure(self, module, args, output) -> None:
        audio = getattr(output, "audio", None)
        if not module.training or not args or not isinstance(audio, torch.Tensor) or audio.shape != args[0].shape:
            return
        if self._step_amplitude is None:
            self._step_amplitude = StepAmplitude(self.rule, audio.device)
        elif self._step_amplitude.ratio.device != audio.device:  # restored from a checkpoint on the CPU
            self._step_amplitude.to(audio.device)
        self._step_amplitude.update(audio, args[0], judged=self._step >= self.rule.warmup_steps)
        self._last_ratio = self._step_amplitude.ratio

    # ------------------------------------------------------------------ checks
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step  # the step this batch trains (its forward judges after warm-up)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        step = trainer.global_step
        self._recent.append((step, None if loss is None else loss.detach(), self._last_ratio))
        if step % (self.check_every_n_steps or max(1, trainer.log_every_n_steps)):
            return
        # Syncs, on checking steps only; every rank decides alike (a lone rank stopping would hang the rest).
        if any_rank(trainer, loss is not None and not bool(torch.isfinite(loss).all())):
            self._diverged(trainer, f"the training loss is {float(loss) if loss is not None else 'NaN'} at step {step}")
        if self._step_amplitude is not None:
            logged = StepAmplitude.as_dict(reduce_mean(trainer, self._step_amplitude.values()))
            log_now(trainer, logged)
            self._record(trainer, self.tracker.steps(step, logged))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        norms = self.parameter_norms(pl_module)
        log_now(trainer, norms)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(("val/audio/", "train/loss/")) and _is_number(v)}
        metrics.update(norms)
        # The validation that opens a fit (step 0, or a resumed fit redoing its checkpoint's) is a baseline.
        step = 0 if is_start_validation(trainer) else trainer.global_step
        self._record(trainer, self.tracker.observe(step, metrics))
        streaks = self.tracker.streaks
        log_now(trainer, {"val/health/rms_collapse_count": float(streaks["collapse"].count),
                          "val/health/rms_explosion_count": float(streaks["explosion"].count),
                          "val/health/amplitude_collapsed": float(self.collapsed_at_step is not None),
                          "val/health/amplitude_failed": float(self.stop_verdict is not None)})

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        text = str(exception)
        if isinstance(exception, (ValueError, FloatingPointError, RuntimeError)) and \
                any(word in text for word in ("NaN", "nan", "inf", "not finite", "non-finite")):
            self._diverged(trainer, f"{type(exception).__name__}: {text.splitlines()[0] if text else ''}")

    def _diverged(self, trainer, error: str) -> None:
        last: dict[str, float] = {}
        for step, loss, ratio in reversed(self._recent):  # the last step whose loss was finite
            if loss is not None and bool(torch.isfinite(loss).all()):
                last["train/loss/total"] = float(loss)
                if ratio is not None and bool(torch.isfinite(ratio)):
                    last["train/audio/rms_ratio"] = float(ratio)
                last["step"] = float(step)
                break
        for key in ("val/audio/rms_ratio",):
            value = trainer.callback_metrics.get(key)
            if value is not None and _is_number(value):
                last[key] = float(value)
        lr = None
        if trainer.optimizers:
            lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        self._record(trainer, self.tracker.diverged(trainer.global_step, error, last, lr))

    def on_fit_start(self, trainer, pl_module) -> None:
        # A fit resumed from a run this monitor stopped: the user chose to go on, so that finding does
        # not stop it again (a new finding does).
        self._stopped_before = self.stop_verdict
        if self._stopped_before is not None and self.mode == "stop":
            warnings.warn(f"resuming a run the amplitude monitor stopped at step {self._stopped_before.step} "
                          f"({self._stopped_before.failure}, {self._stopped_before.rule}); that finding will not "
                          "stop it again", stacklevel=2)

    def _record(self, trainer, verdicts: list[Verdict]) -> None:
        for verdict in verdicts:
            self.verdicts.append(verdict)
            warnings.warn(verdict.line(), stacklevel=2)
        stop = self.stop_verdict  # a finding raised earlier may only now be sustained
        if stop is not None and stop is not getattr(self, "_stopped_before", None) and self.mode == "stop":
            trainer.should_stop = True

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
        return {"tracker": self.tracker.state_dict(), "verdicts": [v.to_dict() for v in self.verdicts],
                "step_amplitude": None if self._step_amplitude is None else self._step_amplitude.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state_dict.get("tracker", {}))
        self.verdicts = [Verdict.from_dict(v) for v in state_dict.get("verdicts", [])]
        if state_dict.get("step_amplitude"):
            self._step_amplitude = StepAmplitude(self.rule)
            self._step_amplitude.load_state_dict(state_dict["step_amplitude"])


def _is_number(value) -> bool:
    """A logged value that converts to a float (NaN and inf included: divergence is evidence too)."""
    try:
        float(value)
    except (TypeError, ValueError, RuntimeError):
        return False
    return True
