"""Configuration of the codec's layer structure and quantizer: what the phase YAMLs set.

Plain dataclasses, so LightningCLI (jsonargparse) checks every key and type and
rejects a typo by name, and so checkpoints store them as plain dicts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FINAL_CONV = ("none", "identity", "default")


@dataclass
class StructureConfig:
    """Layer structure of the codec (F4 is an ablation of these switches).

    Args:
        channels: channels of the first encoder conv; doubled at every stride.
        strides: encoder downsampling factors; their product is the hop (2*4*5*8 = 320: 50 Hz at 16 kHz).
        latent_dim: channels of the quantized latent.
        residual_units: residual units per resolution in encoder and decoder.
        pre_rvq_conv: a 1x1 conv between encoder and quantizer.
        final_conv: a 1x1 conv between quantizer and decoder: "none", "identity" (identity
            init, the reports' Phase A) or "default" (the usual random init).
        waveform_norm: EnCodec-style model-level normalization: divide the input audio by its
            RMS scale, multiply the decoded audio by it (the scale is side information).
    """

    channels: int = 16
    strides: list[int] = field(default_factory=lambda: [2, 4, 5, 8])
    latent_dim: int = 64
    residual_units: int = 1
    pre_rvq_conv: bool = True
    final_conv: str = "none"
    waveform_norm: bool = False

    def __post_init__(self):
        if self.final_conv not in FINAL_CONV:
            raise ValueError(f"model.structure.final_conv must be one of {FINAL_CONV}, got {self.final_conv!r}")
        if not self.strides or any(int(s) < 1 for s in self.strides):
            raise ValueError(f"model.structure.strides must be positive integers, got {self.strides!r}")
        for name in ("channels", "latent_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.structure.{name} must be >= 1, got {getattr(self, name)!r}")

    @property
    def hop_length(self) -> int:
        hop = 1
        for s in self.strides:
            hop *= int(s)
        return hop


@dataclass
class QuantizerConfig:
    """Arguments of codec.quantize.ResidualVQ (its `dim` is structure.latent_dim).

    Args:
        num_quantizers: levels in the residual stack.
        codebook_size: codes per level.
        codebook_dim: per-level projection to this lookup size (DAC's factorised codes); null: none.
        normalization: "none" | "zscore" | "l2" | "rms_scale" (F5).
        update: "ema" | "gradient": how codebooks learn (F6).
        commitment_weight: weight of the commitment loss.
        decay: EMA decay of codewords and usage.
        init: "kmeans" (first training batch) | "random" (F8).
        dead_code_threshold: EMA usage below which a code is re-seeded from recent inputs; 0: off.
        quantizer_dropout: probability that a training item uses a random number of levels.
        post_scale: learnable per-level scale and bias on each level's output (Phase A).
        straight_through: "stack" (one straight-through for the whole stack) | "level" (DAC's: inside
            each level, so the reconstruction gradient trains every level's codebook_dim projections).
        kmeans_iters: Lloyd iterations of the k-means init.
        compile: torch.compile the quantizer's batched codebook update (GPU speed; off by default).
    """

    num_quantizers: int = 8
    codebook_size: int = 256
    codebook_dim: int | None = None
    normalization: str = "none"
    update: str = "ema"
    commitment_weight: float = 0.25
    decay: float = 0.99
    init: str = "kmeans"
    dead_code_threshold: float = 2.0
    quantizer_dropout: float = 0.0
    post_scale: bool = False
    straight_through: str = "stack"
    kmeans_iters: int = 10
    compile: bool = False

    def __post_init__(self):
        # The quantizer's own checks, run when the config is read, named as the config key.
        from codec.quantize.residual import _check_options

        try:
            _check_options(1, self.num_quantizers, self.codebook_size, self.codebook_dim, self.normalization,
                           self.update, self.init, self.commitment_weight, self.decay, self.dead_code_threshold,
                           self.quantizer_dropout, straight_through=self.straight_through)
        except ValueError as error:
            raise ValueError(f"model.quantizer.{error}") from None
        if self.kmeans_iters < 0:
            raise ValueError(f"model.quantizer.kmeans_iters must be >= 0, got {self.kmeans_iters!r}")
