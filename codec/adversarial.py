"""Adversarial training: its config (`model.adversarial`, conf/gan.yaml) and its losses.

The generator is the codec. Per batch, once warm-up is over, the discriminator takes one step on
the detached reconstruction, then the codec takes one step on its reconstruction loss plus
`weight(step) * (generator_weight * adversarial + feature_matching_weight * feature matching)`.
During the first `warmup_steps` generator steps the discriminator neither runs nor steps (the
reports' "GAN with warm-up"); the adversarial weight then ramps linearly from 0 to 1 over
`ramp_steps`. The loss weights are DAC's (conf/base.yml: mel 15, generator 1, feature matching 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from codec.model.discriminator import BANDS, SPECTROGRAMS, Discriminator

LOSSES = ("least_squares", "hinge")
# "l1": DAC's, the L1 of every feature map summed, so the widest, loudest maps weigh most;
# "relative": EnCodec's, each map's L1 divided by the mean |feature| of the target, averaged
# over maps, so every layer of every sub-discriminator counts alike and the term is O(1).
FEATURE_MATCHING = ("l1", "relative")


@dataclass
class AdversarialConfig:
    """Args:
    enabled: train with the discriminator (manual optimization in CodecModule); off: the codec alone.
    loss: "least_squares" (LSGAN, as DAC and HiFi-GAN) | "hinge" (SoundStream, EnCodec).
    warmup_steps: generator steps before the discriminator runs and the adversarial terms count.
    ramp_steps: steps after warm-up over which the adversarial weight rises from 0 to 1.
    generator_weight: weight of the generator's adversarial loss (DAC: 1, against a mel term ~14x
        this lab's: DAC's balance here is 0.07, conf/gan_dac_balance.yaml).
    feature_matching_weight: weight of the feature-matching L1 (DAC: 2; DAC's balance here: 0.14).
    feature_matching: "l1" (DAC: summed L1 over feature maps) | "relative" (EnCodec: each map's L1
        over the target's mean |feature|, averaged over maps).
    train_encoder: true (DAC, EnCodec): the adversarial and feature-matching gradients train the whole
        codec. false: they stop at the quantized latent (the module decodes it a second time, cut from
        the graph), so they train the decoder side only and the encoder and quantizer learn from the
        reconstruction loss alone (README, "Adversarial training", says why one would).
    periods, period_channels, fft_sizes, stft_channels, bands, peak_normalize: the discriminator
        (codec.model.discriminator.Discriminator).
    spectrogram: what the STFT discriminators judge: "complex" (DAC: real and imaginary parts, phase
        included) | "magnitude" (UnivNet's MRD: the log magnitude, phase-blind).
    lr, betas, weight_decay: the discriminator's AdamW (DAC: 1e-4, (0.8, 0.99)).
    lr_decay: the discriminator's exponential decay per discriminator step (DAC: 0.999996).
    cooldown: true: the discriminator's rate also falls to 0 over the codec schedule's cool-down
        (the same last steps of the run; it needs the codec's WarmupExponentialLR, and any other
        codec schedule is rejected), so both players anneal together; false: decay alone,
        the discriminator keeps learning at full rate while the codec's rate goes to 0.
    generator_clip_norm: gradient-norm clip of the codec's step. Under manual optimization
        Lightning does not clip (and refuses trainer.gradient_clip_val), so the module clips
        with this value; null: no clipping.
    discriminator_clip_norm: gradient-norm clip of the discriminator's step (DAC: 10); null: none.
    """

    enabled: bool = False
    loss: str = "least_squares"
    warmup_steps: int = 500
    ramp_steps: int = 0
    generator_weight: float = 1.0
    feature_matching_weight: float = 2.0
    feature_matching: str = "l1"
    train_encoder: bool = True
    periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    period_channels: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    fft_sizes: list[int] = field(default_factory=lambda: [1024, 512, 256])
    stft_channels: int = 8
    bands: list[list[float]] = field(default_factory=lambda: [list(b) for b in BANDS])
    peak_normalize: bool = True
    spectrogram: str = "complex"
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.8, 0.99])
    weight_decay: float = 0.01
    lr_decay: float = 0.999996
    cooldown: bool = False
    generator_clip_norm: float | None = 1.0
    discriminator_clip_norm: float | None = 10.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"model.adversarial.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.feature_matching not in FEATURE_MATCHING:
            raise ValueError(f"model.adversarial.feature_matching must be one of {FEATURE_MATCHING}, "
                             f"got {self.feature_matching!r}")
        if self.spectrogram not in SPECTROGRAMS:
            raise ValueError(f"model.adversarial.spectrogram must be one of {SPECTROGRAMS}, "
                             f"got {self.spectrogram!r}")
        for name in ("warmup_steps", "ramp_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.adversarial.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("generator_weight", "feature_matching_weight", "lr", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.adversarial.{name} must be >= 0, got {getattr(self, name)}")
        if len(self.betas) != 2:
            raise ValueError(f"model.adversarial.betas must be two numbers, got {self.betas}")

    def build_discriminator(self) -> Discriminator:
        return Discriminator(self.periods, self.period_channels, self.fft_sizes, self.stft_channels,
                             self.bands, self.peak_normalize, self.spectrogram)

    def weight(self, step: int) -> float:
        """0 during warm-up, then a linear ramp to 1 over ramp_steps."""
        if step < self.warmup_steps:
            return 0.0
        if self.ramp_steps <= 0:
            return 1.0
        return min(1.0, (step - self.warmup_steps + 1) / self.ramp_steps)


def discriminator_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]], kind: str) -> torch.Tensor:
    """Summed over sub-discriminators: real logits pushed to 1 (above 1 for hinge), fake to 0 (below -1)."""
    total = real[0][-1].new_zeros(())
    for r, f in zip(real, fake, strict=True):
        if kind == "hinge":
            total = total + F.relu(1 - r[-1]).mean() + F.relu(1 + f[-1]).mean()
        else:
            total = total + (1 - r[-1]).pow(2).mean() + f[-1].pow(2).mean()
    return total


def generator_loss(fake: list[list[torch.Tensor]], kind: str) -> torch.Tensor:
    """Summed over sub-discriminators: the codec's output judged real."""
    total = fake[0][-1].new_zeros(())
    for f in fake:
        total = total + (F.relu(1 - f[-1]).mean() if kind == "hinge" else (1 - f[-1]).pow(2).mean())
    return total


def feature_matching_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]],
                          kind: str = "l1") -> torch.Tensor:
    """L1 between the discriminator's features of output and target over every feature map but the
    logits; the target's features are constants. "l1" sums the maps' L1 (DAC); "relative" divides
    each by the target map's mean |feature| and averages over maps (EnCodec)."""
    terms = []
    for r, f in zip(real, fake, strict=True):
        for real_map, fake_map in zip(r[:-1], f[:-1], strict=True):
            target = real_map.detach()
            term = F.l1_loss(fake_map, target)
            if kind == "relative":
                term = term / target.abs().mean().clamp_min(1e-8)
            terms.append(term)
    total = torch.stack(terms)  # every sub-discriminator has feature maps besides its logits
    return total.mean() if kind == "relative" else total.sum()
