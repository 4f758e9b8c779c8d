"""SEANet-style encoder and decoder (EnCodec / DAC family), sized by config.

Encoder: conv7 -> [residual units -> strided conv, channels x2] per stride -> conv3 to latent.
Decoder: conv7 from latent -> [transposed conv, channels /2 -> residual units] per stride.
The decoder stops at `channels` features; the waveform projection (`out_proj`)
is owned by the codec, because its norm is one of the things we watch (F3, F4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from codec.model.layers import Downsample, ResidualUnit, Upsample

DILATIONS = (1, 3, 9)


def _residual_stack(channels: int, units: int) -> list[nn.Module]:
    return [ResidualUnit(channels, DILATIONS[i % len(DILATIONS)]) for i in range(units)]


class Encoder(nn.Module):
    def __init__(self, channels: int, strides: Sequence[int], latent_dim: int, residual_units: int = 1):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(1, channels, kernel_size=7, padding=3)]
        ch = channels
        for stride in strides:
            layers += _residual_stack(ch, residual_units)
            layers += [nn.ELU(), Downsample(ch, ch * 2, stride)]
            ch *= 2
        layers += [nn.ELU(), nn.Conv1d(ch, latent_dim, kernel_size=3, padding=1)]
        self.net = nn.Sequential(*layers)
        self.out_channels = ch

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.net(audio)


class Decoder(nn.Module):
    def __init__(self, channels: int, strides: Sequence[int], latent_dim: int, residual_units: int = 1):
        super().__init__()
        ch = channels * 2 ** len(strides)
        layers: list[nn.Module] = [nn.Conv1d(latent_dim, ch, kernel_size=7, padding=3)]
        for stride in reversed(strides):
            layers += [nn.ELU(), Upsample(ch, ch // 2, stride)]
            ch //= 2
            layers += _residual_stack(ch, residual_units)
        layers += [nn.ELU()]
        self.net = nn.Sequential(*layers)
        self.out_channels = ch

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)
