"""CodecModule: the LightningModule that trains a Codec and logs what the reports needed to see.

Metric names follow `{stage}/{group}/{name}` (design.md): train/loss/*, train/rvq/*,
val/audio/*, val/rvq/*. Validation metrics come from `codec.metrics` (the same accumulator
`codec eval` uses).

Optimization. The codec's optimizer and schedule come from LightningCLI's `optimizer:` and
`lr_scheduler:` keys (conf/defaults.yaml), or AdamW + `WarmupExponentialLR` with the same
recipe when the module is used without them; the schedule is stepped after every optimizer
step. Without adversarial training, Lightning's automatic optimization runs the step (and
`trainer.gradient_clip_val` clips it), exactly as before the GAN existed. With
`adversarial.enabled` the module switches to manual optimization: per batch, one codec forward
(and a second decoding with `adversarial.train_encoder` off), then (after warm-up) a
discriminator step, then the codec step, clipped by the module
(`adversarial.generator_clip_norm`: Lightning neither clips under manual optimization nor
accepts `trainer.gradient_clip_val` there). The discriminator steps through the strategy (so
precision plugins apply) but not through Lightning's optimizer wrapper, whose step is what
advances `trainer.global_step` under manual optimization: `global_step` counts codec steps
only, so max_steps, validation and checkpoint intervals, the progressive schedule and the
monitors' windows mean the same with and without a discriminator.
"""

from __future__ import annotations

import math
from dataclasses import asdict

import lightning as L
import torch

from codec.adversarial import (
    AdversarialConfig,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)
from codec.losses import LossConfig, ReconstructionLoss, vq_weight
from codec.lr_schedule import WarmupExponentialLR
from codec.metrics import AudioMetrics, CodeUsage
from codec.model import Codec, CodecOutput, QuantizerConfig, StructureConfig

# The shared recipe's optimizer, for use without LightningCLI (conf/defaults.yaml is the reference).
DEFAULT_LR, DEFAULT_BETAS, DEFAULT_WEIGHT_DECAY = 5e-4, (0.8, 0.99), 0.01
DEFAULT_WARMUP_STEPS, DEFAULT_DECAY, DEFAULT_COOLDOWN = 200, 0.999996, 0.2


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
        adversarial: adversarial training (discriminators, losses, warm-up, their optimizer);
            off by default (conf/gan.yaml turns it on).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        structure: StructureConfig | None = None,
        quantizer: QuantizerConfig | None = None,
        losses: LossConfig | None = None,
        adversarial: AdversarialConfig | None = None,
    ):
        super().__init__()
        # Plain dicts in the frame's locals, so the checkpoint's hparams load with weights_only=True.
        structure = asdict(_config(StructureConfig, structure))
        quantizer = asdict(_config(QuantizerConfig, quantizer))
        losses = asdict(_config(LossConfig, losses))
        adversarial = asdict(_config(AdversarialConfig, adversarial))
        self.save_hyperparameters()
        self.sample_rate = sample_rate
        self.loss_config = LossConfig(**losses)
        self.adversarial = AdversarialConfig(**adversarial)
        self.codec = Codec(StructureConfig(**structure), QuantizerConfig(**quantizer))
        self.reconstruction = ReconstructionLoss(self.loss_config, sample_rate)
        self.discriminator = None
        if self.adversarial.enabled:
            # Drawn from a copy of the random state, so everything random after it (data order,
            # k-means, re-seeding) is what the same run without a discriminator draws: with and
            # without the GAN, the warm-up steps are the same steps, and a comparison is paired.
            with torch.random.fork_rng(devices=[]):
                self.discriminator = self.adversarial.build_discriminator()
        self.automatic_optimization = self.discriminator is None
        self.frame_rate = sample_rate / self.codec.hop_length
        self.val_audio = AudioMetrics(sample_rate)
        self.val_codes = CodeUsage(self.quantizer.num_quantizers, self.quantizer.codebook_size, self.frame_rate)
        self._cli_optimizer = None

    @property
    def quantizer(self):
        return self.codec.quantizer

    def forward(self, audio: torch.Tensor):
        return self.codec(audio)

    def bitrate_kbps(self, num_levels: int | None = None) -> float:
        """Nominal bitrate of the codes: levels x log2(codebook size) x frames per second."""
        return self.quantizer.bits_per_frame(num_levels) * self.frame_rate / 1000.0

    # ---------------------------------------------------------------- training
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor | None:
        out = self.codec(batch)
        recon, parts = self.reconstruction(out.audio, batch, model=self.codec)
        vq_total = sum(out.vq.losses.values())
        total = recon + vq_weight(self.global_step, self.loss_config) * vq_total
        write_logs = self._writes_logs_this_step()
        if self.discriminator is not None:
            total, adv_logs = self._adversarial_step(batch, out, total, write_logs)
            parts.update(adv_logs)
        if write_logs:
            logs = {f"train/loss/{name}": value for name, value in parts.items()}
            logs["train/loss/vq_commit"] = out.vq.losses["commit"].detach()
            if "codebook" in out.vq.losses:
                logs["train/loss/vq_codebook"] = out.vq.losses["codebook"].detach()
            logs["train/loss/total"] = total.detach()
            logs["train/rvq/num_active"] = float(self.quantizer.num_active)
            logs["train/rvq/bitrate_kbps"] = self.bitrate_kbps()
            logs.update(self._level_logs("train"))
            self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch.shape[0])
        return total if self.automatic_optimization else None

    def _adversarial_step(self, target: torch.Tensor, out: CodecOutput, codec_loss: torch.Tensor,
                          logging: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One discriminator step (after warm-up) and one codec step; returns the codec's total loss
        and the adversarial terms for `train/loss/adv/*`."""
        cfg = self.adversarial
        codec_opt, disc_opt = self.optimizers()
        schedulers = self.lr_schedulers() or []
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        weight = cfg.weight(self.global_step)
        logs: dict[str, torch.Tensor] = {"adv/weight": torch.tensor(weight)}
        if weight > 0:
            # Discriminator step on the detached output: no gradient reaches the codec.
            d_loss = discriminator_loss(self.discriminator(target), self.discriminator(out.audio.detach()), cfg.loss)
            disc_opt.zero_grad()
            self.manual_backward(d_loss)
            if cfg.discriminator_clip_norm:
                self.clip_gradients(disc_opt, gradient_clip_val=cfg.discriminator_clip_norm, gradient_clip_algorithm="norm")
            # The raw optimizer through the strategy: LightningOptimizer.step() would count a global step.
            self.trainer.strategy.optimizer_step(disc_opt.optimizer, closure=lambda: None, model=self)
            self._step_scheduler(schedulers, disc_opt.optimizer)
            logs["adv/discriminator"] = d_loss.detach()
            # Codec's adversarial terms: the discriminator is frozen, so they train the codec only.
            self.toggle_optimizer(codec_opt)
            # One backward for both losses (DDP's reducer allows no second); with train_encoder off the
            # adversarial terms judge a second decoding of the detached latent instead.
            fake = self.discriminator(out.audio if cfg.train_encoder else self.codec.resynthesize_detached(out))
            with torch.no_grad():
                real = self.discriminator(target)
            g_adv, g_fm = generator_loss(fake, cfg.loss), feature_matching_loss(real, fake, cfg.feature_matching)
            codec_loss = codec_loss + weight * (cfg.generator_weight * g_adv + cfg.feature_matching_weight * g_fm)
            self.untoggle_optimizer(codec_opt)
            logs["adv/generator"], logs["adv/feature_matching"] = g_adv.detach(), g_fm.detach()
            if logging:
                logs["adv/real_score"] = torch.stack([r[-1].mean() for r in real]).mean()
                logs["adv/fake_score"] = torch.stack([f[-1].mean().detach() for f in fake]).mean()
        codec_opt.zero_grad()
        self.manual_backward(codec_loss)
        if cfg.generator_clip_norm:
            self.clip_gradients(codec_opt, gradient_clip_val=cfg.generator_clip_norm, gradient_clip_algorithm="norm")
        codec_opt.step()  # the one step per batch that advances global_step
        self._step_scheduler(schedulers, codec_opt.optimizer)
        return codec_loss, logs

    @staticmethod
    def _step_scheduler(schedulers, optimizer) -> None:
        for scheduler in schedulers:
            if scheduler.optimizer is optimizer:
                scheduler.step()

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
    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        out = self.codec(batch)
        self.val_audio.update(out.audio, batch)
        self.val_codes.update(out.vq.codes)

    def on_validation_epoch_end(self) -> None:
        logs = validation_logs(self.val_audio.compute(), self.val_codes.compute())
        self.val_audio.reset()
        self.val_codes.reset()
        # The accumulators already summed every rank's batches (torchmetrics syncs in compute), so
        # under DDP each rank holds the same numbers: sync_dist averages identical values, keeping
        # every rank's callback_metrics (what the monitors judge) equal.
        self.log_dict(logs, sync_dist=True)

    # ------------------------------------------------------------ optimizers
    def setup(self, stage: str) -> None:
        # LightningCLI's `optimizer:`/`lr_scheduler:` keys replace configure_optimizers on the
        # instance (over every parameter, the discriminator's too, with the epoch as the schedule's
        # interval). Keep what it built and configure it here, so both modes share one path.
        cli_configure = vars(self).pop("configure_optimizers", None)
        if cli_configure is not None:
            self._cli_optimizer = _optimizer_and_scheduler(cli_configure())

    def configure_optimizers(self):
        if self._cli_optimizer is not None:
            optimizer, scheduler = self._cli_optimizer
        else:
            optimizer = torch.optim.AdamW(self.codec.parameters(), lr=DEFAULT_LR, betas=DEFAULT_BETAS,
                                          weight_decay=DEFAULT_WEIGHT_DECAY)
            scheduler = WarmupExponentialLR(optimizer, DEFAULT_WARMUP_STEPS, DEFAULT_DECAY, DEFAULT_COOLDOWN)
        self._bind_run_length(scheduler)
        if self.discriminator is not None:
            _drop_parameters(optimizer, self.discriminator.parameters())
        configs = [_optimizer_config(optimizer, scheduler)]
        if self.discriminator is not None:
            cfg = self.adversarial
            disc_opt = torch.optim.AdamW(self.discriminator.parameters(), lr=cfg.lr, betas=tuple(cfg.betas),
                                         weight_decay=cfg.weight_decay)
            configs.append(_optimizer_config(disc_opt, _discriminator_schedule(disc_opt, cfg, scheduler)))
        return configs[0] if len(configs) == 1 else configs

    def _bind_run_length(self, scheduler) -> None:
        """A cool-down ends with the run: give the schedule the run's length unless it was set
        (`estimated_stepping_batches`: max_steps, or what max_epochs comes to)."""
        if isinstance(scheduler, WarmupExponentialLR) and scheduler.needs_total_steps:
            total = self.trainer.estimated_stepping_batches if self._trainer is not None else -1
            scheduler.set_total_steps(int(total) if math.isfinite(total) else -1)


def validation_logs(audio: dict, codes: dict) -> dict[str, float]:
    """`val/audio/*` and `val/rvq/*` from the accumulators' results."""
    logs = {f"val/audio/{key}": float(value) for key, value in audio.items() if key != "items"}
    for level in codes["levels"]:
        for key in ("perplexity", "codes_used", "bits_used"):
            logs[f"val/rvq/q{level['level']}/{key}"] = float(level[key])
    logs["val/rvq/bitrate_kbps"] = codes["bitrate_kbps"]
    logs["val/rvq/bitrate_used_kbps"] = codes["bitrate_used_kbps"]
    return logs


def _optimizer_and_scheduler(configured):
    """(optimizer, scheduler or scheduler config or None) from what LightningCLI's configure_optimizers returns."""
    if isinstance(configured, torch.optim.Optimizer):
        return configured, None
    if isinstance(configured, dict):
        return configured["optimizer"], configured.get("lr_scheduler")
    optimizers, schedulers = configured
    return optimizers[0], (schedulers[0] if schedulers else None)


def _discriminator_schedule(disc_opt, cfg: AdversarialConfig, codec_schedule) -> WarmupExponentialLR:
    """DAC's decay per discriminator step; with `cfg.cooldown`, also the codec schedule's cool-down over
    the same steps of the run (the discriminator's first step is the run's step `cfg.warmup_steps`)."""
    if not cfg.cooldown:
        return WarmupExponentialLR(disc_opt, 0, cfg.lr_decay)
    if not isinstance(codec_schedule, WarmupExponentialLR) or not codec_schedule.total_steps:
        raise ValueError("model.adversarial.cooldown follows the codec's cool-down, which needs lr_scheduler "
                         "codec.lr_schedule.WarmupExponentialLR with a known run length; got "
                         f"{type(codec_schedule).__name__ if codec_schedule is not None else 'no schedule'}")
    return WarmupExponentialLR(disc_opt, 0, cfg.lr_decay, codec_schedule.cooldown_fraction,
                               codec_schedule.total_steps, step_offset=cfg.warmup_steps)


def _optimizer_config(optimizer, scheduler) -> dict:
    if scheduler is None:
        return {"optimizer": optimizer}
    if isinstance(scheduler, dict):  # e.g. ReduceLROnPlateau with its monitor: as configured
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _drop_parameters(optimizer: torch.optim.Optimizer, parameters) -> None:
    """Remove `parameters` from the (not yet stepped) optimizer's groups."""
    drop = {id(p) for p in parameters}
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in drop]
