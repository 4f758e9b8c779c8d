"""Reconstruction losses: spectral, waveform and the RMS family from the collapse reports (F3, F4).

Every loss is a small module whose `forward(pred, target)` takes (B, 1, S) waveforms (or
(B, S)) and returns a scalar; `ParameterNormLoss.forward(model)` is the one exception.
`ReconstructionLoss` combines them with the weights of a `LossConfig` and builds only the
losses whose weight is non-zero. The VQ losses live in `codec.quantize.losses`; the training
module adds them, weighted by `vq_weight(step, config)`.

Why the RMS family exists (F3): in the reports every loss fell while the output RMS fell 98 %
(0.231 -> 0.0037, target 0.075). Spectral convergence is bounded by 1 for a silent output and
frame-RMS L1 by the target's own RMS, so "match the shape, shrink the scale" was a cheap
shortcut. Absolute RMS, scale anchor and parameter-norm regularisation are the remedies the
reports proposed (phase_a_v2, which still collapsed); they are here so that can be ablated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

LOG_EPS = 1e-7  # floor for log-magnitudes, so silence gives finite logs and gradients
RMS_EPS = 1e-8  # inside the square root, as in the reports, so rms(0) has a finite gradient


# ---------------------------------------------------------------------------------------------
# shapes


def _as_signals(x: Tensor) -> Tensor:
    """(B, 1, S) or (B, S) -> (B, S): the losses are defined on mono waveforms."""
    if x.dim() == 3 and x.shape[1] == 1:
        return x[:, 0]
    if x.dim() == 2:
        return x
    raise ValueError(f"expected a (B, 1, S) or (B, S) waveform, got shape {tuple(x.shape)}")


def _full_precision(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return _as_signals(pred), _as_signals(target)


# ---------------------------------------------------------------------------------------------
# RMS helpers


def rms(x: Tensor, dim: int | tuple[int, ...] = -1, eps: float = RMS_EPS) -> Tensor:
    """Root mean square over `dim`: sqrt(mean(x^2) + eps)."""
    return torch.sqrt(x.pow(2).mean(dim=dim) + eps)


def frame_rms(x: Tensor, frame_length: int, hop_length: int, eps: float = RMS_EPS) -> Tensor:
    """RMS of each frame: (B, 1, S) -> (B, frames).

    The tail is zero-padded so every sample lands in a frame (a signal shorter than one frame
    gives one frame); padding is the same for pred and target, so it does not bias a loss.
    """
    if frame_length <= 0 or hop_length <= 0:
        raise ValueError(f"frame_length and hop_length must be positive, got {frame_length}, "
                         f"{hop_length}")
    signals = _as_signals(x)
    length = signals.shape[-1]
    frames = 1 + max(0, math.ceil((length - frame_length) / hop_length))
    padded_length = (frames - 1) * hop_length + frame_length
    signals = F.pad(signals, (0, padded_length - length))
    return rms(signals.unfold(-1, frame_length, hop_length), dim=-1, eps=eps)


# ---------------------------------------------------------------------------------------------
# spectral losses


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1, averaged over STFT resolutions.

    Spectral convergence uses Frobenius norms over the whole batch (as Parallel WaveGAN does),
    not per item: a per-item ratio lets a near-silent item with a tiny ||S_t|| dominate.
    """

    def __init__(self, fft_sizes: tuple[int, ...] = (256, 512, 1024), hop_fraction: float = 0.25,
                 eps: float = LOG_EPS):
        super().__init__()
        if not fft_sizes:
            raise ValueError("fft_sizes must not be empty")
        if not 0 < hop_fraction <= 1:
            raise ValueError(f"hop_fraction must be in (0, 1], got {hop_fraction}")
        self.fft_sizes = tuple(int(n) for n in fft_sizes)
        self.hop_fraction = hop_fraction
        self.eps = eps
        for n_fft in self.fft_sizes:
            # Non-persistent: follows .to(device) but is not written into checkpoints.
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def magnitude(self, signals: Tensor, n_fft: int) -> Tensor:
        hop = max(1, int(n_fft * self.hop_fraction))
        window = getattr(self, f"window_{n_fft}")
        return torch.stft(signals, n_fft, hop, window=window, return_complex=True).abs()

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = _check_pair(pred, target)
        total = pred.new_zeros(())
        for n_fft in self.fft_sizes:
            mag_pred, mag_target = self.magnitude(pred, n_fft), self.magnitude(target, n_fft)
            convergence = torch.linalg.norm(mag_target - mag_pred) / (
                torch.linalg.norm(mag_target) + self.eps)
            log_l1 = F.l1_loss(torch.log(mag_pred + self.eps), torch.log(mag_target + self.eps))
            total = total + convergence + log_l1
        return total / len(self.fft_sizes)


class MultiScaleMelLoss(nn.Module):
    """L1 between log10(mel + eps) of pred and target, averaged over scales (DAC-style).

    `power=1.0` is a magnitude mel spectrogram; each scale uses hop = n_fft // 4.
    """

    def __init__(self, sample_rate: int = 16000, fft_sizes: tuple[int, ...] = (256, 512, 1024),
                 n_mels: tuple[int, ...] = (32, 64, 80), power: float = 1.0, eps: float = 1e-5):
        super().__init__()
        if len(fft_sizes) != len(n_mels) or not fft_sizes:
            raise ValueError(f"fft_sizes {fft_sizes} and n_mels {n_mels} must pair up one to one")
        self.eps = eps
        self.scales = nn.ModuleList()
        for n_fft, mels in zip(fft_sizes, n_mels, strict=True):
            mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=sample_rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=mels,
                power=power)
            # torchaudio registers its window and filterbank as persistent buffers; they are
            # derived from the arguments, so keep them out of checkpoints like the STFT windows.
            for sub in mel.modules():
                for name, buffer in list(sub.named_buffers(recurse=False)):
                    sub.register_buffer(name, buffer, persistent=False)
            self.scales.append(mel)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = _check_pair(pred, target)
        total = pred.new_zeros(())
        for mel in self.scales:
            total = total + self._log_mel_error(mel, pred, target).mean()
        return total / len(self.scales)

    def _log_mel_error(self, mel: nn.Module, pred: Tensor, target: Tensor) -> Tensor:
        """|log10(mel(pred) + eps) - log10(mel(target) + eps)| at one scale: (..., n_mels, frames)."""
        return (torch.log10(mel(pred) + self.eps) - torch.log10(mel(target) + self.eps)).abs()

    @torch.no_grad()
    def band_distances(self, pred: Tensor, target: Tensor,
                       bands_hz: tuple[tuple[float, float], ...]) -> tuple[Tensor, Tensor]:
        """`forward`'s distance and, from the same spectrograms, the distance per frequency band.

        A band's distance is the mean over scales of the mean error of the mel bins whose centre
        lies in [low, high) Hz (scales with no such bin are left out; NaN when no scale has one).
        It says where in the spectrum a run loses its mel distance: an adversarial run that matches
        the low bands and doubles the error above 2 kHz has the same `mel_l1` story as a run that
        is worse everywhere, but not the same cause.
        """
        pred, target = _check_pair(pred, target)
        total = pred.new_zeros(())
        band_sum, band_scales = [pred.new_zeros(()) for _ in bands_hz], [0 for _ in bands_hz]
        for mel in self.scales:
            error = self._log_mel_error(mel, pred, target)
            total = total + error.mean()
            per_bin = error.movedim(-2, 0).flatten(1).mean(dim=1)  # (n_mels,)
            centres = mel_centres_hz(mel)
            for i, (low, high) in enumerate(bands_hz):
                inside = (centres >= low) & (centres < high)
                if inside.any():
                    band_sum[i] = band_sum[i] + per_bin[inside].mean()
                    band_scales[i] += 1
        bands = torch.stack([s / n if n else torch.full_like(s, float("nan"))
                             for s, n in zip(band_sum, band_scales, strict=True)])
        return total / len(self.scales), bands


def mel_centres_hz(mel: torchaudio.transforms.MelSpectrogram) -> Tensor:
    """The centre frequency of each mel filter: its weighted mean frequency (NaN for an empty
    filter, which torchaudio warns about and whose bin is log10(eps) for every input)."""
    filters = mel.mel_scale.fb  # (n_fft // 2 + 1, n_mels)
    freqs = torch.linspace(0.0, mel.sample_rate / 2, filters.shape[0], dtype=filters.dtype, device=filters.device)
    return (freqs[:, None] * filters).sum(dim=0) / filters.sum(dim=0)


@torch.no_grad()
def mel_distance(pred: Tensor, target: Tensor, sample_rate: int = 16000) -> Tensor:
    """The validation metric `val/audio/mel_l1`: `MultiScaleMelLoss(sample_rate)` with its
    defaults, without gradients.

    Fixed settings, independent of the loss config, so runs with different mel-loss weights
    or scales stay comparable (and it is logged even when the mel loss is off). Computed in
    float32 under mixed precision. Building the transforms costs about a millisecond.
    """
    with torch.autocast(pred.device.type, enabled=False):
        pred, target = _full_precision(pred), _full_precision(target)
        return MultiScaleMelLoss(sample_rate).to(pred.device)(pred, target)


class WaveformL1(nn.Module):
    """Mean |pred - target| over all samples."""

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = _check_pair(pred, target)
        return F.l1_loss(pred, target)


# ---------------------------------------------------------------------------------------------
# RMS family (the reports' formulas)


class FrameRMSLoss(nn.Module):
    """l1(rms(pred_frames), rms(target_frames)); 400/200 samples = 25/12.5 ms at 16 kHz.

    Bounded by the target's mean frame RMS when pred collapses to silence, which is why it did
    not stop the collapse (F3).
    """

    def __init__(self, frame_length: int = 400, hop_length: int = 200):
        super().__init__()
        self.frame_length = frame_length
        self.hop_length = hop_length

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_pair(pred, target)
        return F.l1_loss(frame_rms(pred, self.frame_length, self.hop_length),
                         frame_rms(target, self.frame_length, self.hop_length))


class MultiBandRMSLoss(nn.Module):
    """Per-band frame RMS from STFT energies; L1 between pred and target, averaged over bands.

    Band energy is normalised by Parseval so that, summed over bands covering 0..Nyquist, it is
    the Hann-weighted mean square of the frame: a sine of amplitude A has band RMS ~ A / sqrt(2).
    A band is [low, high) in Hz; a band ending at Nyquist includes the Nyquist bin.
    """

    def __init__(self, sample_rate: int = 16000,
                 bands_hz: tuple[tuple[float, float], ...] = ((0, 500), (500, 2000), (2000, 8000)),
                 fft_size: int = 512, eps: float = RMS_EPS):
        super().__init__()
        nyquist = sample_rate / 2
        freqs = torch.fft.rfftfreq(fft_size, d=1.0 / sample_rate)
        masks = []
        for low, high in bands_hz:
            if not 0 <= low < high <= nyquist:
                raise ValueError(f"band ({low}, {high}) Hz must satisfy 0 <= low < high <= "
                                 f"{nyquist} (Nyquist)")
            below_high = freqs <= high if high == nyquist else freqs < high
            mask = (freqs >= low) & below_high
            if not mask.any():
                raise ValueError(f"band ({low}, {high}) Hz holds no bin of a {fft_size}-point FFT")
            masks.append(mask)
        window = torch.hann_window(fft_size)
        # One-sided spectrum: every bin but DC and Nyquist stands for two (a +f and a -f).
        one_sided = torch.full_like(freqs, 2.0)
        one_sided[0] = 1.0
        one_sided[-1] = 1.0 if fft_size % 2 == 0 else 2.0
        weights = torch.stack(masks).float() * one_sided / (fft_size * window.pow(2).sum())
        self.bands_hz = tuple(bands_hz)
        self.fft_size = fft_size
        self.eps = eps
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("band_weights", weights, persistent=False)  # (bands, freqs)

    def band_rms(self, x: Tensor) -> Tensor:
        """(B, 1, S) -> (B, bands, frames)."""
        spec = torch.stft(_as_signals(x), self.fft_size, self.fft_size // 4, window=self.window,
                          return_complex=True)
        power = spec.real.pow(2) + spec.imag.pow(2)  # (B, freqs, frames)
        return torch.sqrt(torch.einsum("kf,bft->bkt", self.band_weights, power) + self.eps)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_pair(pred, target)
        # l1_loss averages over bands, frames and items alike; bands have equal frame counts.
        return F.l1_loss(self.band_rms(pred), self.band_rms(target))


class LoudnessLoss(nn.Module):
    """L1 between the frame levels of pred and target in decibels: mean |20 log10(rms_p / rms_t)|
    over frames (1024 samples, hop 256 = 64/16 ms at 16 kHz), levels floored at `floor_db` dBFS.

    Why (issue 10): the log-mel and log-STFT L1 losses match the *median* of log-magnitudes bin by
    bin, so a reconstruction whose spectrum is smoothed (energy missing from the peaks, added in
    the valleys) settles below the target's energy: the steady under-amplitude (RMS ratio
    0.3-0.7) of mel-heavy training. A frame's level is one number per frame, so its L1 is not
    biased by how the energy is spread inside the frame, and in decibels it weighs quiet and loud
    items alike, as the mel loss does; unlike frame_rms (linear, bounded by the target's level,
    F3) it does not vanish for quiet items.
    """

    def __init__(self, frame_length: int = 1024, hop_length: int = 256, floor_db: float = -100.0):
        super().__init__()
        self.frame_length, self.hop_length = frame_length, hop_length
        self.floor = 10.0 ** (floor_db / 20.0)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _check_pair(pred, target)
        levels = [20.0 * torch.log10(frame_rms(x, self.frame_length, self.hop_length).clamp_min(self.floor))
                  for x in (pred, target)]
        return F.l1_loss(*levels)


class AbsoluteRMSLoss(nn.Module):
    """mse(rms(pred), target_rms), rms per item over the whole signal; `target` is unused.

    The reports fix target_rms = 0.075 (their data's level); it ignores the actual target's
    level, so it only makes sense on level-normalised data.
    """

    def __init__(self, target_rms: float = 0.075, eps: float = RMS_EPS):
        super().__init__()
        if target_rms < 0:
            raise ValueError(f"target_rms must be >= 0, got {target_rms}")
        self.target_rms = target_rms
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor | None = None) -> Tensor:
        level = rms(_as_signals(pred), dim=-1, eps=self.eps)
        return F.mse_loss(level, torch.full_like(level, self.target_rms))


class ScaleAnchorLoss(nn.Module):
    """mse(rms(target) / rms(pred), 1) per item.

    Asymmetric by construction: a too-quiet output is penalised without bound (ratio -> large),
    a too-loud one by at most 1; that is the point against amplitude collapse.
    """

    def __init__(self, eps: float = RMS_EPS):
        super().__init__()
        self.eps = eps

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = _check_pair(pred, target)
        ratio = rms(target, dim=-1, eps=self.eps) / (rms(pred, dim=-1, eps=self.eps) + self.eps)
        return F.mse_loss(ratio, torch.ones_like(ratio))


class ParameterNormLoss(nn.Module):
    """mse(||W||, initial ||W||) averaged over named parameters of a model (F4: out_proj).

    `forward(model)` takes the model whose `named_parameters()` hold the names. The initial
    norms are captured on the first call into persistent buffers (NaN until then), so they are
    in every checkpoint and a resumed run keeps the anchor of the original initialisation.
    """

    def __init__(self, param_names: list[str] | tuple[str, ...] = ("out_proj.weight",)):
        super().__init__()
        if not param_names:
            raise ValueError("param_names must name at least one parameter")
        self.param_names = list(param_names)
        for name in self.param_names:
            self.register_buffer(self.buffer_name(name), torch.tensor(float("nan")))

    @staticmethod
    def buffer_name(param_name: str) -> str:
        return "initial_norm__" + param_name.replace(".", "__")

    def initial_norm(self, param_name: str) -> Tensor:
        return getattr(self, self.buffer_name(param_name))

    def forward(self, model: nn.Module) -> Tensor:
        params = dict(model.named_parameters())
        missing = [name for name in self.param_names if name not in params]
        if missing:
            available = ", ".join(list(params)[:8]) + (", ..." if len(params) > 8 else "")
            raise KeyError(f"{type(model).__name__} has no parameter {missing[0]!r} "
                           f"(norm regularisation); available: {available or 'none'}")
        total = None
        for name in self.param_names:
            norm = torch.linalg.norm(params[name])
            anchor = self.initial_norm(name)
            if torch.isnan(anchor):
                anchor.copy_(norm.detach())
            term = F.mse_loss(norm, anchor.to(norm.dtype))
            total = term if total is None else total + term
        return total / len(self.param_names)


# ---------------------------------------------------------------------------------------------
# configuration and the combined loss


WEIGHT_FIELDS = ("stft", "mel", "l1", "frame_rms", "multiband_rms", "abs_rms", "scale_anchor",
                 "norm_reg", "loudness", "vq")


@dataclass
class LossConfig:
    """Weights and settings of the reconstruction losses (a zero weight turns a loss off).

    Args:
        stft: weight of the multi-resolution STFT loss (spectral convergence + log-magnitude L1).
        mel: weight of the multi-scale log-mel L1 loss.
        l1: weight of the waveform L1 loss.
        frame_rms: weight of the frame-RMS L1 loss (phase_2a onwards).
        multiband_rms: weight of the multi-band RMS L1 loss (phase_a onwards).
        abs_rms: weight of the absolute-RMS loss, mse(rms(pred), abs_rms_target) (phase_a_v2).
        scale_anchor: weight of the scale-anchor loss, mse(rms(target) / rms(pred), 1).
        norm_reg: weight of the parameter-norm regularisation, mse(||W||, initial ||W||).
        loudness: weight of the frame-level loudness L1 in dB (`LoudnessLoss`, issue 10).
        abs_rms_target: output RMS the absolute-RMS loss aims for (the reports use 0.075).
        norm_reg_params: parameter names, as in the codec's named_parameters(), to regularise.
        vq: weight of the VQ (commitment + codebook) losses, added by the training module.
        vq_warmup_steps: steps over which the VQ weight ramps linearly from 0 (0: no warm-up).
    """

    stft: float = 1.0
    mel: float = 1.0
    l1: float = 1.0
    frame_rms: float = 0.0
    multiband_rms: float = 0.0
    abs_rms: float = 0.0
    scale_anchor: float = 0.0
    norm_reg: float = 0.0
    loudness: float = 0.0
    abs_rms_target: float = 0.075
    norm_reg_params: list[str] = field(default_factory=lambda: ["out_proj.weight"])
    vq: float = 1.0
    vq_warmup_steps: int = 0

    def __post_init__(self) -> None:
        for name in (*WEIGHT_FIELDS, "abs_rms_target"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss config field {name!r} must be a finite number >= 0, "
                                 f"got {value}")
        if self.vq_warmup_steps < 0:
            raise ValueError(f"loss config field 'vq_warmup_steps' must be >= 0, "
                             f"got {self.vq_warmup_steps}")
        if self.norm_reg > 0 and not self.norm_reg_params:
            raise ValueError("loss config field 'norm_reg_params' is empty but norm_reg > 0")


def vq_weight(step: int, config: LossConfig) -> float:
    """VQ loss weight at `step`: linear from 0 at step 0 to `config.vq` at `vq_warmup_steps`
    (F8 warm-up), then constant; always `config.vq` without warm-up."""
    if config.vq_warmup_steps <= 0:
        return config.vq
    return config.vq * min(max(step, 0) / config.vq_warmup_steps, 1.0)


class ReconstructionLoss(nn.Module):
    """Weighted sum of the reconstruction losses whose weight in `config` is non-zero.

    `forward` returns (total, parts): `parts` maps each computed loss's short name to its
    unweighted, detached value for logging as `train/loss/<name>`. A loss with weight 0 is not
    built and not computed; with none active the total is a constant 0. The VQ losses are not
    included (see `vq_weight`).
    """

    def __init__(self, config: LossConfig, sample_rate: int = 16000):
        super().__init__()
        self.config = config
        builders = {
            "stft": MultiResolutionSTFTLoss,
            "mel": lambda: MultiScaleMelLoss(sample_rate),
            "l1": WaveformL1,
            "frame_rms": FrameRMSLoss,
            "multiband_rms": lambda: MultiBandRMSLoss(sample_rate),
            "abs_rms": lambda: AbsoluteRMSLoss(config.abs_rms_target),
            "scale_anchor": ScaleAnchorLoss,
            "norm_reg": lambda: ParameterNormLoss(config.norm_reg_params),
            "loudness": LoudnessLoss,
        }
        self.weights = {name: getattr(config, name) for name in builders
                        if getattr(config, name) > 0}
        self.terms = nn.ModuleDict({name: builders[name]() for name in self.weights})

    @property
    def active_losses(self) -> list[str]:
        return list(self.terms)

    def forward(self, pred: Tensor, target: Tensor,
                model: nn.Module | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        if "norm_reg" in self.terms and model is None:
            raise ValueError("norm_reg weight > 0 needs the model: call loss(pred, target, model)")
        # Logs of small spectral energies are meaningless in half precision: under mixed
        # precision, compute every loss in float32.
        with torch.autocast(pred.device.type, enabled=False):
            pred, target = _full_precision(pred), _full_precision(target)
            total = pred.new_zeros(())
            parts = {}
            for name, term in self.terms.items():
                value = term(model) if isinstance(term, ParameterNormLoss) else term(pred, target)
                total = total + self.weights[name] * value
                parts[name] = value.detach()
        return total, parts
