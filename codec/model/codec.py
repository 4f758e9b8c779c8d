"""The codec: encoder -> pre_rvq_conv -> quantizer -> [final_conv] -> decoder -> out_proj.

Every optional piece is a config switch (StructureConfig / QuantizerConfig), so
the reports' phases differ by YAML only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from codec.model.config import QuantizerConfig, StructureConfig
from codec.model.layers import scaled_normal_init_
from codec.model.seanet import Decoder, Encoder
from codec.quantize import ResidualVQ, RVQOutput


@dataclass
class CodecOutput:
    audio: torch.Tensor  # (B, 1, S) reconstruction
    vq: RVQOutput  # codes, VQ losses, side information of the quantizer
    waveform_scale: torch.Tensor | None  # (B, 1, 1) when structure.waveform_norm


def waveform_rms(audio: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-item RMS over channels and samples, (B, 1, 1); eps after the root, as EnCodec, so quiet items keep their exact scale."""
    return audio.pow(2).mean(dim=(1, 2), keepdim=True).sqrt() + eps


class Codec(nn.Module):
    def __init__(self, structure: StructureConfig | None = None, quantizer: QuantizerConfig | None = None):
        super().__init__()
        self.structure = structure = structure or StructureConfig()
        quantizer = quantizer or QuantizerConfig()
        latent = structure.latent_dim
        self.encoder = Encoder(structure.channels, structure.strides, latent, structure.residual_units)
        self.pre_rvq_conv = nn.Conv1d(latent, latent, 1) if structure.pre_rvq_conv else nn.Identity()
        self.quantizer = ResidualVQ(dim=latent, **asdict(quantizer))
        self.final_conv = nn.Conv1d(latent, latent, 1) if structure.final_conv != "none" else None
        self.decoder = Decoder(structure.channels, structure.strides, latent, structure.residual_units)
        self.out_proj = nn.Conv1d(self.decoder.out_channels, 1, kernel_size=7, padding=3)
        scaled_normal_init_(self)
        if structure.final_conv == "identity":
            with torch.no_grad():
                self.final_conv.weight.copy_(torch.eye(latent).unsqueeze(-1))
                self.final_conv.bias.zero_()

    @property
    def hop_length(self) -> int:
        return self.structure.hop_length

    def forward(self, audio: torch.Tensor, num_levels: int | None = None) -> CodecOutput:
        self._check_audio(audio)
        x, scale, length = self._prepare(audio)
        vq = self.quantizer(self.pre_rvq_conv(self.encoder(x)), num_levels=num_levels)
        return CodecOutput(self._synthesize(vq.quantized, scale, length), vq, scale)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor, num_levels: int | None = None) -> dict[str, torch.Tensor | None]:
        """Codes and side information of `audio` (B, 1, S), with no side effect in any mode."""
        self._check_audio(audio)
        x, scale, length = self._prepare(audio)
        codes, latent_scale = self.quantizer.encode(self.pre_rvq_conv(self.encoder(x)), num_levels)
        return {"codes": codes, "latent_scale": latent_scale, "waveform_scale": scale,
                "length": torch.tensor(length)}

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, latent_scale=None, waveform_scale=None, length=None) -> torch.Tensor:
        """Audio (B, 1, S) from what `encode` returned; refuses codes with more levels than are active (F1)."""
        latent = self.quantizer.decode(codes, latent_scale)
        length = int(length) if length is not None else codes.shape[-1] * self.hop_length
        return self._synthesize(latent, waveform_scale, length)

    def resynthesize_detached(self, output: CodecOutput) -> torch.Tensor:
        """`output.audio` again, decoded from its quantized latent cut from the graph: a loss on it
        trains final_conv, the decoder and out_proj, and no gradient reaches the encoder or quantizer."""
        return self._synthesize(output.vq.quantized.detach(), output.waveform_scale, output.audio.shape[-1])

    def _synthesize(self, latent: torch.Tensor, scale: torch.Tensor | None, length: int) -> torch.Tensor:
        if self.final_conv is not None:
            latent = self.final_conv(latent)
        audio = self.out_proj(self.decoder(latent))[..., :length]
        return audio if scale is None else audio * scale

    def _prepare(self, audio: torch.Tensor):
        length = audio.shape[-1]
        scale = None
        if self.structure.waveform_norm:
            scale = waveform_rms(audio)
            audio = audio / scale
        pad = (-length) % self.hop_length
        return (F.pad(audio, (0, pad)) if pad else audio), scale, length

    @staticmethod
    def _check_audio(audio: torch.Tensor) -> None:
        if audio.dim() != 3 or audio.shape[1] != 1:
            raise ValueError(f"Codec expects mono audio of shape (batch, 1, samples), got {tuple(audio.shape)}")
