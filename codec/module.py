"""CodecModule: the LightningModule that trains a Codec and logs what the reports needed to see.

Metric names follow `{stage}/{group}/{name}` (design.md): train/loss/*,
train/rvq/*, val/audio/*, val/rvq/*. The optimizer and its schedule come from
LightningCLI's `optimizer:` / `lr_scheduler:` config keys (AdamW by default
when the module is used outside the CLI).
"""

from __future__ import annotations

from dataclasses import asdict

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.audio import ScaleInvariantSignalDistortionRatio, SignalNoiseRatio

from codec.losses import LossConfig, MultiBandRMSLoss, ReconstructionLoss, mel_distance, vq_weight
from codec.model import Codec, QuantizerConfig, StructureConfig
from codec.quantize.stats import perplexity


def _config(cls, value):
    """A config dataclass from a dataclass, a dict (from a checkpoint) or None (the defaults)."""
    if value is None:
        return cls()
    if isinstance(value, dict):
        return cls(**value)
    return value


class CodecModule(L.LightningModule):
    """Trains an RVQ codec on (B, 1, S) audio batches.

    Args:
        sample_rate: audio sample rate in Hz (must match the data).
        structure: layer structure of the codec (encoder/decoder sizes, pre_rvq_conv, final_conv,
            waveform normalization).
        quantizer: the residual quantizer's options (normalization, update rule, init, ...).
        losses: weights of every loss (0 = not computed) and the VQ warm-up.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        structure: StructureConfig | None = None,
        quantizer: QuantizerConfig | None = None,
        losses: LossConfig | None = None,
    ):
        super().__init__()
        # Plain dicts in the frame's locals, so the checkpoint's hparams load with weights_only=True.
        structure = asdict(_config(StructureConfig, structure))
        quantizer = asdict(_config(QuantizerConfig, quantizer))
        losses = asdict(_config(LossConfig, losses))
        self.save_hyperparameters()
        self.sample_rate = sample_rate
        self.loss_config = LossConfig(**losses)
        self.codec = Codec(StructureConfig(**structure), QuantizerConfig(**quantizer))
        self.reconstruction = ReconstructionLoss(self.loss_config, sample_rate)
        self.val_snr = SignalNoiseRatio()
        self.val_si_sdr = ScaleInvariantSignalDistortionRatio()
        self.val_mel = MeanMetric()
        self.val_pred_energy = SumMetric()
        self.val_target_energy = SumMetric()
        # Per-band RMS ratios at validation (F3: which part of the spectrum lost its level).
        nyquist = sample_rate / 2
        edges = [e for e in (0.0, 500.0, 2000.0) if e < nyquist] + [nyquist]
        self.val_bands = MultiBandRMSLoss(sample_rate, tuple(zip(edges[:-1], edges[1:], strict=True)))
        bands = len(self.val_bands.bands_hz)  # energy sums of pred and target, one metric per band
        self.val_band_energy = nn.ModuleList([nn.ModuleList([SumMetric() for _ in range(bands)]) for _ in range(2)])
        self._val_histograms: list[torch.Tensor] = []

    @property
    def quantizer(self):
        return self.codec.quantizer

    def forward(self, audio: torch.Tensor):
        return self.codec(audio)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        out = self.codec(batch)
        recon, parts = self.reconstruction(out.audio, batch, model=self.codec)
        vq_total = sum(out.vq.losses.values())
        total = recon + vq_weight(self.global_step, self.loss_config) * vq_total
        if self._writes_logs_this_step():
            logs = {f"train/loss/{name}": value for name, value in parts.items()}
            logs["train/loss/vq_commit"] = out.vq.losses["commit"].detach()
            if "codebook" in out.vq.losses:
                logs["train/loss/vq_codebook"] = out.vq.losses["codebook"].detach()
            logs["train/loss/total"] = total.detach()
            logs["train/rvq/num_active"] = float(self.quantizer.num_active)
            logs.update(self._level_logs("train"))
            self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch.shape[0])
        return total

    def _writes_logs_this_step(self) -> bool:
        """Lightning writes step metrics every `log_every_n_steps`; log (and compute stats) only then.

        Each self.log costs about 1 ms on CPU, which was most of the framework's overhead, and
        statistics logged on other steps would be written later under the wrong step.
        """
        connector = getattr(self.trainer, "_logger_connector", None)
        return connector is None or connector.should_update_logs

    def _level_logs(self, stage: str) -> dict[str, float]:
        logs = {}
        stats = self.quantizer.level_stats()
        for s in stats:
            if not s.active:
                continue
            prefix = f"{stage}/rvq/q{s.level}"
            logs[f"{prefix}/perplexity"] = s.perplexity
            logs[f"{prefix}/codes_used"] = float(s.codes_used)
            logs[f"{prefix}/dead_codes"] = float(s.dead_codes)
        logs[f"{stage}/rvq/utilization"] = self.quantizer.utilization(stats)
        return logs

    # -------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_histograms = []

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        out = self.codec(batch)
        pred, target = out.audio.flatten(1), batch.flatten(1)
        self.val_snr.update(pred, target)
        self.val_si_sdr.update(pred, target)
        self.val_mel.update(mel_distance(out.audio, batch, self.sample_rate), weight=batch.shape[0])
        self.val_pred_energy.update(pred.pow(2).sum())
        self.val_target_energy.update(target.pow(2).sum())
        for metrics, audio in zip(self.val_band_energy, (out.audio, batch), strict=True):
            for metric, energy in zip(metrics, self.val_bands.band_rms(audio).pow(2).sum(dim=(0, 2)), strict=True):
                metric.update(energy)
        histograms = [level.last_histogram for level in self.quantizer.levels[: int(self.quantizer.num_active)]]
        if not self._val_histograms:
            self._val_histograms = [h.clone() for h in histograms]
        else:
            for acc, h in zip(self._val_histograms, histograms, strict=True):
                acc += h

    def on_validation_epoch_end(self) -> None:
        energy_ratio = self.val_pred_energy.compute() / self.val_target_energy.compute().clamp_min(1e-12)
        logs = {
            "val/audio/snr_db": self.val_snr.compute(),
            "val/audio/si_sdr_db": self.val_si_sdr.compute(),
            "val/audio/mel_l1": self.val_mel.compute(),
            "val/audio/rms_ratio": energy_ratio.sqrt(),
        }
        for (low, high), pred, target in zip(self.val_bands.bands_hz, *self.val_band_energy, strict=True):
            logs[f"val/audio/rms_ratio_{low:.0f}_{high:.0f}hz"] = (pred.compute() / target.compute().clamp_min(1e-12)).sqrt()
        for level, hist in enumerate(self._val_histograms):
            logs[f"val/rvq/q{level}/perplexity"] = perplexity(hist)
            logs[f"val/rvq/q{level}/codes_used"] = float((hist > 0).sum())
        for metric in (self.val_snr, self.val_si_sdr, self.val_mel, self.val_pred_energy, self.val_target_energy,
                       *self.val_band_energy[0], *self.val_band_energy[1]):
            metric.reset()
        self.log_dict(logs)

    def configure_optimizers(self):
        # Used when the module is driven without LightningCLI; the CLI's optimizer key replaces it.
        return torch.optim.AdamW(self.parameters(), lr=2e-3, weight_decay=0.0)
