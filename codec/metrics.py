"""Validation metrics, accumulated over a set: one definition for training's validation and `codec eval`.

`AudioMetrics` compares decoded audio with its target; `CodeUsage` counts the codes each level
chose and turns the counts into perplexity, codes used and the bits actually used. Both are
torchmetrics `Metric`s whose states are sums, so `compute()` gives the same numbers whether
the set arrived in batches of 8 (validation), one file at a time (`codec eval`) or split over
DDP ranks (the states are all-reduced before `compute`).

Silent targets: an item whose target RMS is below `silence_floor_dbfs` (default -70 dBFS) is
left out of every ratio, of the correlation, SNR and SI-SDR (an all-zero target made the RMS
ratio 1.9e7), and counted in `silent_items`. -70 dBFS is 25 dB under the quietest item of the
embedded data (-45 dBFS) and about the noise floor of a quiet room in a 16-bit recording, so
only digital silence and near-silence fall under it. The spectral distances (mel, STFT) and the
DC figures keep every item: they stay finite on silence, and a DC offset in the output of a
silent target is still an output defect.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchaudio.functional import loudness
from torchmetrics import Metric
from torchmetrics.functional.audio import (
    scale_invariant_signal_distortion_ratio,
    signal_noise_ratio,
)

from codec.losses import MultiBandRMSLoss, MultiScaleMelLoss
from codec.quantize.stats import perplexity, usage_entropy_bits

SILENCE_FLOOR_DBFS = -70.0
BANDS_HZ = ((0.0, 500.0), (500.0, 2000.0), (2000.0, 8000.0))
STFT_DISTANCE_FFT_SIZES = (2048, 512)  # DAC's MultiScaleSTFTLoss window lengths
MIN_SPECTRAL_SAMPLES = 1025  # the largest FFT's reflect padding (1024) needs more samples than that
LOUDNESS_BLOCK_SECONDS = 0.4  # BS.1770's gating block
LOUDNESS_GATE_LUFS = -70.0  # BS.1770's absolute gate
LOG_CLAMP = 1e-5  # DAC's clamp of magnitudes before log10


def bands_below_nyquist(sample_rate: int) -> tuple[tuple[float, float], ...]:
    """The validation bands (0-500, 500-2000, 2000-Nyquist Hz) cut at the rate's Nyquist frequency."""
    nyquist = sample_rate / 2
    edges = [e for e in (0.0, 500.0, 2000.0) if e < nyquist] + [nyquist]
    return tuple(zip(edges[:-1], edges[1:], strict=True))


def band_key(metric: str, low: float, high: float) -> str:
    """`rms_ratio_500_2000hz`: a per-band metric's key."""
    return f"{metric}_{low:.0f}_{high:.0f}hz"


class STFTDistance(torch.nn.Module):
    """Multi-scale STFT distance: mean |log10 |S_pred| - log10 |S_target|| over bins and scales
    (DAC's `MultiScaleSTFTLoss` with its log term only), magnitudes clamped at 1e-5."""

    def __init__(self, fft_sizes: tuple[int, ...] = STFT_DISTANCE_FFT_SIZES):
        super().__init__()
        self.fft_sizes = tuple(fft_sizes)
        for n_fft in self.fft_sizes:
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = pred.flatten(1), target.flatten(1)
        total = pred.new_zeros(())
        for n_fft in self.fft_sizes:
            window = getattr(self, f"window_{n_fft}")
            spec = [torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True).abs()
                    .clamp_min(LOG_CLAMP).log10() for x in (pred, target)]
            total = total + F.l1_loss(*spec)
        return total / len(self.fft_sizes)


def _sum_state(metric: Metric, name: str, shape: tuple[int, ...] = (), dtype=torch.float64) -> None:
    metric.add_state(name, default=torch.zeros(shape, dtype=dtype), dist_reduce_fx="sum")


class AudioMetrics(Metric):
    """Audio quality of a set of (pred, target) pairs; `compute()` returns, by key:

    - `snr_db`, `si_sdr_db`: means over non-silent items (torchmetrics' functional SNR/SI-SDR);
    - `mel_l1`: the multi-scale log-mel L1 of `codec.losses.MultiScaleMelLoss` with its
      defaults, `stft_distance` (`STFTDistance`): means over items weighted by length;
      per band `mel_l1_{low}_{high}hz`, the mel distance of the mel bins centred in the band
      (`MultiScaleMelLoss.band_distances`), weighted the same way;
    - `rms_ratio`: sqrt(output energy / target energy) over the non-silent items, DC included;
      `rms_ratio_no_dc`: the same with each item's mean removed from output and target;
      per band `rms_ratio_{low}_{high}hz` (STFT band energies, `MultiBandRMSLoss.band_rms`);
    - `correlation`: Pearson correlation of output and target over all samples of the
      non-silent items, each item's mean removed;
    - `dc_offset`: RMS over items of each output item's mean (waveform units);
      `dc_fraction`: output DC energy / output energy (0..1), over every item;
    - `loudness_diff_lu`: mean over items of output loudness - target loudness (ITU-R BS.1770,
      torchaudio's `loudness`, in LU = dB), `loudness_diff_max_lu` the largest |difference|: the
      "decoded speech keeps its loudness within 3 dB" check. Only items of at least 0.4 s (one
      gating block) whose target passes the -70 LUFS gate count (`loudness_items`); an output
      below the gate counts as -70 LUFS;
    - `silent_items`: targets below the silence floor; `items`: every item seen;
    - `stoi` (only with `stoi=True`, needs `pystoi`): mean STOI over non-silent items. STOI
      wants about 3 s or more of speech per item, so it is for `codec eval` on whole files,
      not for 0.5 s validation crops.
    Ratios, correlation, SNR and SI-SDR are NaN when every item was silent.
    """

    full_state_update = False

    def __init__(self, sample_rate: int = 16000, silence_floor_dbfs: float = SILENCE_FLOOR_DBFS,
                 stoi: bool = False, **kwargs):
        super().__init__(**kwargs)
        if stoi:
            _require_pystoi()
        self.sample_rate = sample_rate
        self.silence_rms = 10.0 ** (silence_floor_dbfs / 20.0)
        self.stoi = stoi
        self.mel = MultiScaleMelLoss(sample_rate)
        self.stft = STFTDistance()
        self.bands = MultiBandRMSLoss(sample_rate, bands_below_nyquist(sample_rate))
        for name in ("items", "silent_items", "snr_sum", "si_sdr_sum", "pred_energy", "target_energy",
                     "pred_energy_no_dc", "target_energy_no_dc", "cross_no_dc", "dc_square_sum",
                     "dc_energy", "output_energy", "spectral_weight", "mel_sum", "stft_sum", "stoi_sum",
                     "loudness_items", "loudness_diff_sum"):
            _sum_state(self, name)
        self.add_state("loudness_diff_max", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="max")
        bands = len(self.bands.bands_hz)
        _sum_state(self, "band_pred_energy", (bands,))
        _sum_state(self, "band_target_energy", (bands,))
        _sum_state(self, "band_mel_sum", (bands,))

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """pred, target: (B, 1, S) or (B, S) waveforms of equal shape."""
        if pred.shape != target.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        pred, target = pred.detach().float().reshape(pred.shape[0], -1), target.detach().float().reshape(pred.shape[0], -1)
        items, samples = pred.shape
        self.items += items
        self._spectral(pred, target)
        p64, t64 = pred.double(), target.double()
        pred_mean = p64.mean(dim=1, keepdim=True)
        self.dc_square_sum += pred_mean.pow(2).sum()
        self.dc_energy += (pred_mean.pow(2) * samples).sum()
        self.output_energy += p64.pow(2).sum()

        audible = t64.pow(2).mean(dim=1).sqrt() >= self.silence_rms
        self.silent_items += (~audible).sum()
        if not audible.any():
            return
        p, t = p64[audible], t64[audible]
        self.snr_sum += signal_noise_ratio(p, t).sum()
        self.si_sdr_sum += scale_invariant_signal_distortion_ratio(p, t).sum()
        self.pred_energy += p.pow(2).sum()
        self.target_energy += t.pow(2).sum()
        p0, t0 = p - p.mean(dim=1, keepdim=True), t - t.mean(dim=1, keepdim=True)
        self.pred_energy_no_dc += p0.pow(2).sum()
        self.target_energy_no_dc += t0.pow(2).sum()
        self.cross_no_dc += (p0 * t0).sum()
        pa, ta = pred[audible], target[audible]
        self.band_pred_energy += self.bands.band_rms(pa).double().pow(2).sum(dim=(0, 2))
        self.band_target_energy += self.bands.band_rms(ta).double().pow(2).sum(dim=(0, 2))
        self._loudness(pa, ta)
        if self.stoi:
            from torchmetrics.functional.audio import short_time_objective_intelligibility

            self.stoi_sum += short_time_objective_intelligibility(pa.cpu(), ta.cpu(), self.sample_rate).double().sum()

    def _loudness(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape[-1] < LOUDNESS_BLOCK_SECONDS * self.sample_rate:
            return  # no gating block: BS.1770 loudness is undefined
        with torch.autocast(pred.device.type, enabled=False):
            out_lufs, target_lufs = (loudness(x[:, None], self.sample_rate).double() for x in (pred, target))
        # Everything gated away (silence) gives NaN: an output that quiet counts at the gate, so a
        # codec that outputs silence shows a large negative difference instead of dropping out.
        out_lufs = torch.where(torch.isfinite(out_lufs), out_lufs.clamp_min(LOUDNESS_GATE_LUFS),
                               torch.full_like(out_lufs, LOUDNESS_GATE_LUFS))
        counted = torch.isfinite(target_lufs)
        diff = torch.where(counted, out_lufs - target_lufs, torch.zeros_like(out_lufs))
        self.loudness_items += counted.sum()
        self.loudness_diff_sum += diff.sum()
        self.loudness_diff_max = torch.maximum(self.loudness_diff_max, diff.abs().max())

    def _spectral(self, pred: Tensor, target: Tensor) -> None:
        pad = max(0, MIN_SPECTRAL_SAMPLES - pred.shape[-1])
        if pad:  # zeros on both sides alike: a short clip (codec eval) still gets a spectrum
            pred, target = F.pad(pred, (0, pad)), F.pad(target, (0, pad))
        with torch.autocast(pred.device.type, enabled=False):
            weight = float(pred.shape[0] * (pred.shape[-1] - pad))
            mel, band_mel = self.mel.band_distances(pred, target, self.bands.bands_hz)
            self.mel_sum += weight * mel.double()
            self.band_mel_sum += weight * band_mel.double()
            self.stft_sum += weight * self.stft(pred, target).double()
        self.spectral_weight += weight

    def compute(self) -> dict[str, Tensor]:
        audible = self.items - self.silent_items
        nan = torch.tensor(math.nan, dtype=torch.float64, device=self.items.device)

        def ratio(num: Tensor, den: Tensor) -> Tensor:
            return torch.where(den > 0, num / den.clamp_min(1e-30), nan)

        out = {
            "snr_db": ratio(self.snr_sum, audible),
            "si_sdr_db": ratio(self.si_sdr_sum, audible),
            "mel_l1": ratio(self.mel_sum, self.spectral_weight),
            "stft_distance": ratio(self.stft_sum, self.spectral_weight),
            "rms_ratio": ratio(self.pred_energy, self.target_energy).sqrt(),
            "rms_ratio_no_dc": ratio(self.pred_energy_no_dc, self.target_energy_no_dc).sqrt(),
            "correlation": ratio(self.cross_no_dc, (self.pred_energy_no_dc * self.target_energy_no_dc).sqrt()),
            "dc_offset": ratio(self.dc_square_sum, self.items).sqrt(),
            "dc_fraction": torch.where(self.output_energy > 0, ratio(self.dc_energy, self.output_energy),
                                       torch.zeros_like(nan)),
            "loudness_diff_lu": ratio(self.loudness_diff_sum, self.loudness_items),
            "loudness_diff_max_lu": torch.where(self.loudness_items > 0, self.loudness_diff_max, nan),
            "loudness_items": self.loudness_items.clone(),
            "silent_items": self.silent_items.clone(),
            "items": self.items.clone(),
        }
        for (low, high), p, t, mel in zip(self.bands.bands_hz, self.band_pred_energy, self.band_target_energy,
                                          self.band_mel_sum, strict=True):
            out[band_key("rms_ratio", low, high)] = ratio(p, t).sqrt()
            out[band_key("mel_l1", low, high)] = ratio(mel, self.spectral_weight)
        if self.stoi:
            out["stoi"] = ratio(self.stoi_sum, audible)
        return {k: v.float() for k, v in out.items()}


class CodeUsage(Metric):
    """Per-level code histograms over a set; `compute()` gives per level `perplexity`,
    `codes_used` and `bits_used` (usage entropy in bits per frame: what an entropy coder would
    need), and the bitrates at `frame_rate` frames per second: `bitrate_kbps` (nominal: levels x
    log2(codebook size)) and `bitrate_used_kbps` (the sum of bits_used)."""

    full_state_update = False

    def __init__(self, num_quantizers: int, codebook_size: int, frame_rate: float, **kwargs):
        super().__init__(**kwargs)
        self.num_quantizers, self.codebook_size, self.frame_rate = num_quantizers, codebook_size, frame_rate
        self.add_state("histograms", default=torch.zeros(num_quantizers, codebook_size, dtype=torch.long),
                       dist_reduce_fx="sum")
        self.add_state("levels", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="max")

    @torch.no_grad()
    def update(self, codes: Tensor) -> None:
        """codes: (B, levels, T) int64."""
        levels = codes.shape[1]
        if levels > self.num_quantizers:
            raise ValueError(f"codes have {levels} levels, the quantizer {self.num_quantizers}")
        offsets = torch.arange(levels, device=codes.device).view(1, levels, 1) * self.codebook_size
        counts = torch.bincount((codes + offsets).reshape(-1), minlength=levels * self.codebook_size)
        self.histograms[:levels] += counts.view(levels, self.codebook_size)
        self.levels = torch.maximum(self.levels, torch.tensor(levels, device=self.levels.device))

    def compute(self) -> dict:
        hists = self.histograms[: int(self.levels)].cpu()
        levels = [{"level": i, "perplexity": perplexity(h), "codes_used": int((h > 0).sum()),
                   "bits_used": usage_entropy_bits(h)} for i, h in enumerate(hists)]
        return {
            "levels": levels,
            "bitrate_kbps": nominal_bitrate_kbps(len(levels), self.codebook_size, self.frame_rate),
            "bitrate_used_kbps": sum(lv["bits_used"] for lv in levels) * self.frame_rate / 1000.0,
        }


def nominal_bitrate_kbps(levels: int, codebook_size: int, frame_rate: float) -> float:
    """levels x log2(codebook size) bits per frame at `frame_rate` frames/s, in kbit/s."""
    return levels * math.log2(codebook_size) * frame_rate / 1000.0


def _require_pystoi() -> None:
    try:
        import pystoi  # noqa: F401
    except ImportError as error:
        raise ImportError("STOI needs the pystoi package: pip install 'codec-lab[perceptual]' "
                          "(or pip install pystoi)") from error
