"""Waveform and spectrogram discriminators for adversarial training (DAC / HiFi-GAN family), sized for CPU.

`Discriminator` holds one `PeriodDiscriminator` per period (HiFi-GAN's multi-period discriminator:
the waveform folded into a 2-D (samples / period, period) image, so each one sees one phase of a
periodic structure) and one `STFTDiscriminator` per FFT size (DAC's multi-band, multi-resolution
discriminator: 2-D convs over the real and imaginary parts of the complex STFT, one conv stack
per frequency band; or, phase-blind, over the log magnitude as UnivNet's multi-resolution
spectrogram discriminator). Every sub-discriminator returns its list of feature maps, the last
one being its logits: the adversarial loss reads the logits, feature matching reads the rest.

DAC's are about 50x wider (MPD channels up to 1024, MRD 32 per band); here the widths are config
values (`AdversarialConfig`) and the defaults keep a discriminator step about as costly as a
codec step on CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

# DAC's bands, as fractions of the one-sided spectrum.
BANDS = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
LEAK = 0.1
# What an STFT discriminator looks at: "complex" (DAC: real and imaginary parts, so it judges phase too)
# or "magnitude" (UnivNet's MRD, here log-compressed like the mel loss: it cannot see phase at all).
SPECTROGRAMS = ("complex", "magnitude")
LOG_FLOOR = 1e-5


def _conv2d(cin: int, cout: int, kernel, stride=1, padding=0) -> nn.Module:
    return weight_norm(nn.Conv2d(cin, cout, kernel, stride, padding))


class PeriodDiscriminator(nn.Module):
    """2-D convs over the waveform folded by `period`; kernels (5, 1) with stride 3 along time."""

    def __init__(self, period: int, channels: Sequence[int] = (16, 32, 64, 128)):
        super().__init__()
        if period < 1 or not channels:
            raise ValueError(f"period must be >= 1 and channels non-empty, got {period}, {channels}")
        self.period = period
        chans = [1, *channels]
        self.convs = nn.ModuleList(
            [_conv2d(a, b, (5, 1), (3, 1), (2, 0)) for a, b in zip(chans[:-1], chans[1:], strict=True)]
            + [_conv2d(chans[-1], chans[-1], (5, 1), 1, (2, 0))])
        self.logits = _conv2d(chans[-1], 1, (3, 1), 1, (1, 0))

    def forward(self, audio: torch.Tensor) -> list[torch.Tensor]:
        pad = (-audio.shape[-1]) % self.period
        x = F.pad(audio, (0, pad), mode="reflect") if pad else audio
        x = x.view(x.shape[0], 1, -1, self.period)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LEAK)
            features.append(x)
        features.append(self.logits(x))
        return features


class STFTDiscriminator(nn.Module):
    """2-D convs over (real, imag) of the STFT at one resolution, or over its log magnitude, one conv
    stack per band; the bands' outputs are joined along frequency before the logits."""

    def __init__(self, n_fft: int, channels: int = 16, bands: Sequence[Sequence[float]] = BANDS,
                 hop_fraction: float = 0.25, spectrogram: str = "complex"):
        super().__init__()
        if spectrogram not in SPECTROGRAMS:
            raise ValueError(f"spectrogram must be one of {SPECTROGRAMS}, got {spectrogram!r}")
        self.spectrogram = spectrogram
        in_channels = 2 if spectrogram == "complex" else 1
        self.n_fft, self.hop = n_fft, max(1, int(n_fft * hop_fraction))
        bins = n_fft // 2 + 1
        self.bands = [(int(low * bins), int(high * bins)) for low, high in bands]
        if any(high <= low for low, high in self.bands):
            raise ValueError(f"bands {bands} leave an empty band at n_fft {n_fft}")
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

        def stack() -> nn.ModuleList:
            return nn.ModuleList([
                _conv2d(in_channels, channels, (3, 9), 1, (1, 4)),
                _conv2d(channels, channels, (3, 9), (1, 2), (1, 4)),
                _conv2d(channels, channels, (3, 9), (1, 2), (1, 4)),
                _conv2d(channels, channels, (3, 9), (1, 2), (1, 4)),
                _conv2d(channels, channels, (3, 3), 1, (1, 1)),
            ])

        self.band_convs = nn.ModuleList([stack() for _ in self.bands])
        self.logits = _conv2d(channels, 1, (3, 3), 1, (1, 1))

    def forward(self, audio: torch.Tensor) -> list[torch.Tensor]:
        spec = torch.stft(audio.flatten(1), self.n_fft, self.hop, window=self.window, return_complex=True)
        if self.spectrogram == "complex":
            x = torch.view_as_real(spec).permute(0, 3, 2, 1)  # (B, 2, frames, bins)
        else:
            x = spec.abs().clamp_min(LOG_FLOOR).log().transpose(1, 2).unsqueeze(1)  # (B, 1, frames, bins)
        features, outputs = [], []
        for (low, high), convs in zip(self.bands, self.band_convs, strict=True):
            band = x[..., low:high]
            for conv in convs:
                band = F.leaky_relu(conv(band), LEAK)
                features.append(band)
            outputs.append(band)
        features.append(self.logits(torch.cat(outputs, dim=-1)))
        return features


class Discriminator(nn.Module):
    """Multi-period waveform + multi-resolution STFT discriminators.

    Args:
        periods: one PeriodDiscriminator per period (HiFi-GAN/DAC: 2, 3, 5, 7, 11).
        period_channels: widths of the period discriminators' strided convs.
        fft_sizes: one STFTDiscriminator per FFT size.
        stft_channels: width of the STFT discriminators' convs.
        bands: frequency bands of the STFT discriminators, fractions of the spectrum.
        peak_normalize: remove each item's DC and scale its peak to 0.8 before judging (DAC),
            so the discriminator judges the shape of a sound whatever its level.
        spectrogram: what the STFT discriminators see, "complex" (DAC) or "magnitude" (UnivNet).
    """

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), period_channels: Sequence[int] = (16, 32, 64, 128),
                 fft_sizes: Sequence[int] = (1024, 512, 256), stft_channels: int = 16,
                 bands: Sequence[Sequence[float]] = BANDS, peak_normalize: bool = True,
                 spectrogram: str = "complex"):
        super().__init__()
        if not periods and not fft_sizes:
            raise ValueError("the discriminator needs at least one period or one FFT size")
        self.peak_normalize = peak_normalize
        self.discriminators = nn.ModuleList(
            [PeriodDiscriminator(p, period_channels) for p in periods]
            + [STFTDiscriminator(n, stft_channels, bands, spectrogram=spectrogram) for n in fft_sizes])

    def forward(self, audio: torch.Tensor) -> list[list[torch.Tensor]]:
        """(B, 1, S) -> per sub-discriminator, its feature maps (the last: logits)."""
        if self.peak_normalize:
            audio = audio - audio.mean(dim=-1, keepdim=True)
            audio = 0.8 * audio / (audio.abs().amax(dim=-1, keepdim=True) + 1e-9)
        return [d(audio) for d in self.discriminators]
