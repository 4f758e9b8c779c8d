"""Convolution building blocks of the SEANet-style encoder and decoder."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def scaled_normal_init_(module: nn.Module) -> None:
    """Weights ~ N(0, 1/fan_in), zero biases, for every conv in `module`.

    With PyTorch's default conv init the prototype's decoder ignored its input and
    every frame mapped to one code; unit-variance-preserving weights fixed it.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv1d):
            fan_in = m.in_channels // m.groups * m.kernel_size[0]
        elif isinstance(m, nn.ConvTranspose1d):
            # each output sample sees in_channels * kernel / stride inputs
            fan_in = m.in_channels // m.groups * max(1, m.kernel_size[0] // m.stride[0])
        else:
            continue
        nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(fan_in))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class ResidualUnit(nn.Module):
    """ELU -> dilated conv (k=3) -> ELU -> 1x1 conv, plus the input."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        hidden = max(1, channels // 2)
        self.block = nn.Sequential(
            nn.ELU(),
            nn.Conv1d(channels, hidden, kernel_size=3, dilation=dilation, padding=dilation),
            nn.ELU(),
            nn.Conv1d(hidden, channels, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class Downsample(nn.Module):
    """Strided conv (kernel 2*stride) that maps length L to exactly L / stride."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.stride // 2
        return self.conv(F.pad(x, (left, self.stride - left)))


class Upsample(nn.Module):
    """Transposed conv (kernel 2*stride) that maps length L to exactly L * stride."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size=2 * stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # length L * stride + stride
        left = self.stride // 2
        return y[..., left : y.shape[-1] - (self.stride - left)]
