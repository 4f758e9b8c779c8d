"""Synthetic speech-like audio: the built-in data set, generated on the fly.

Each item is a pure function of (seed, index): stretches of voiced sound (a glottal-like
pulse train with a gliding, vibrating pitch through moving formants), fricative noise and
silence, scaled to a random loudness. It trains and exercises a codec without a corpus,
and it is cheap: one item is a few vectorized torch ops and a single STFT filter pass,
no sample-by-sample loops.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

VOICED, FRICATIVE, SILENCE = 0, 1, 2
# Vowel-like formant ranges (Hz) for F1..F4; an item uses the first 2 to 4.
FORMANT_RANGES = ((300.0, 900.0), (900.0, 2500.0), (2400.0, 3200.0), (3300.0, 4200.0))
RAMP_SECONDS = 0.005  # onsets and offsets: long enough not to click
NOISE_FLOOR = 1e-3  # -60 dB under the item's level: silences are quiet, not digital zero


class SyntheticSpeech(Dataset):
    """`num_items` speech-like clips (1, S), float32 in [-1, 1], S = sample_rate * segment_seconds.

    Every item mixes voiced stretches (f0 80-320 Hz with glide and vibrato, 2-4 time-varying
    formants), fricative noise bursts and at least one silence, and its RMS level is drawn
    uniformly from `loudness_db` (dBFS) so a codec's amplitude errors show.
    """

    def __init__(
        self,
        num_items: int,
        sample_rate: int = 16000,
        segment_seconds: float = 0.5,
        seed: int = 0,
        loudness_db: tuple[float, float] = (-45.0, -10.0),
    ):
        if num_items < 0 or seed < 0:
            raise ValueError(f"num_items and seed must be >= 0, got {num_items} and {seed}")
        if sample_rate <= 0 or segment_seconds <= 0:
            raise ValueError(
                f"sample_rate and segment_seconds must be > 0, got {sample_rate}, {segment_seconds}"
            )
        if loudness_db[0] > loudness_db[1]:
            raise ValueError(f"loudness_db must be (low, high), got {loudness_db}")
        self.num_items = num_items
        self.sample_rate = sample_rate
        self.segment_seconds = segment_seconds
        self.seed = seed
        self.loudness_db = loudness_db
        self.num_samples = round(sample_rate * segment_seconds)
        self.n_fft = 2 ** math.ceil(math.log2(0.032 * sample_rate))  # ~32 ms frames at any rate
        self.hop = self.n_fft // 4
        self.window = torch.hann_window(self.n_fft)
        self.freqs = torch.fft.rfftfreq(self.n_fft, 1.0 / sample_rate)

    def __len__(self) -> int:
        return self.num_items

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.num_items:
            raise IndexError(f"item {index} out of range for {self.num_items} items")
        rng = np.random.default_rng((self.seed, index))  # the same item in every process
        kinds = self._segment_kinds(rng)
        voiced_gate = self._smooth(kinds == VOICED)
        fricative_gate = self._smooth(kinds == FRICATIVE)
        noise = torch.from_numpy(rng.standard_normal(self.num_samples, dtype=np.float32))
        pulses = self._pulse_train(rng)
        glottal = pulses + rng.uniform(0.02, 0.1) * pulses.std() * noise  # a little breath
        sources = torch.stack([glottal * voiced_gate, noise * fricative_gate])
        # One STFT pass filters both: the voiced source through the vocal tract, the noise
        # through a fricative band.
        spectra = torch.stft(sources, self.n_fft, self.hop, window=self.window, return_complex=True)
        frames = spectra.shape[-1]
        responses = torch.stack([self._vocal_tract(rng, frames), self._fricative_band(rng, frames)])
        voiced, fricative = torch.istft(
            spectra * responses, self.n_fft, self.hop, window=self.window, length=self.num_samples
        )
        fricative = 10 ** (-rng.uniform(6.0, 18.0) / 20) * _unit_rms(fricative, fricative_gate)
        audio = _unit_rms(voiced, voiced_gate) + fricative  # fricatives 6-18 dB under vowels
        audio = audio * torch.maximum(voiced_gate, fricative_gate)  # no filter ringing in silences
        floor = torch.from_numpy(rng.standard_normal(self.num_samples, dtype=np.float32))
        audio = _unit_rms(audio) + NOISE_FLOOR * floor
        target_rms = 10 ** (rng.uniform(*self.loudness_db) / 20)
        audio = audio * target_rms / audio.square().mean().sqrt()
        return audio.clamp(-1.0, 1.0).unsqueeze(0)

    def _segment_kinds(self, rng: np.random.Generator) -> torch.Tensor:
        """Per-sample kind: a shuffled run of voiced, fricative and silent stretches of ~100 ms."""
        count = max(3, round(self.segment_seconds / 0.1 * rng.uniform(0.8, 1.2)))
        # Every item has a voiced stretch and a silence; the rest are mostly voiced.
        kinds = [VOICED, SILENCE, *rng.choice([VOICED, VOICED, FRICATIVE, SILENCE], count - 2)]
        rng.shuffle(kinds)
        weights = np.array([{VOICED: 1.5, FRICATIVE: 0.8, SILENCE: 1.0}[k] for k in kinds])
        weights = weights * np.where(
            np.array(kinds) == SILENCE, rng.uniform(1.0, 1.5, count), rng.uniform(0.6, 1.4, count)
        )
        ends = np.round(np.cumsum(weights) / weights.sum() * self.num_samples).astype(np.int64)
        lengths = torch.from_numpy(np.diff(ends, prepend=0))
        return torch.repeat_interleave(torch.tensor(kinds), lengths)

    def _smooth(self, gate: torch.Tensor) -> torch.Tensor:
        """A 0/1 gate with linear ramps for steps: a moving average (cumsum beats conv1d here)."""
        width = max(1, round(RAMP_SECONDS * self.sample_rate))
        padded = torch.nn.functional.pad(gate.double(), (width // 2 + 1, (width - 1) // 2))
        total = padded.cumsum(0)
        return ((total[width:] - total[:-width]) / width).float()

    def _pulse_train(self, rng: np.random.Generator) -> torch.Tensor:
        """Band-limited pulses at f0(t): a log-linear glide from 80-320 Hz plus vibrato."""
        t = torch.arange(self.num_samples, dtype=torch.float64) / self.sample_rate
        start = math.exp(rng.uniform(math.log(90.0), math.log(280.0)))
        end = float(np.clip(start * 2 ** rng.uniform(-0.5, 0.5), 80.0, 320.0))
        vibrato = rng.uniform(0.0, 0.03) * torch.sin(
            2 * math.pi * rng.uniform(4.0, 7.0) * t + rng.uniform(0, 2 * math.pi)
        )
        f0 = start * (end / start) ** (t / t[-1].clamp_min(1e-9)) * (1 + vibrato)
        phase = torch.remainder(2 * math.pi * torch.cumsum(f0, 0) / self.sample_rate, 2 * math.pi)
        # Sum of cos(k * phase) for k = 1..K in closed form (Dirichlet kernel): flat harmonics up
        # to just under Nyquist at O(1) cost per sample; the vocal tract response adds the tilt.
        harmonics = math.floor(0.95 * self.sample_rate / 2 / float(f0.max()))
        half = torch.sin(phase / 2)
        ratio = torch.sin((harmonics + 0.5) * phase) / torch.where(half.abs() < 1e-9, 1.0, half)
        pulses = torch.where(half.abs() < 1e-9, 2.0 * harmonics + 1, ratio)
        return ((pulses - 1) / 2).float()

    def _vocal_tract(self, rng: np.random.Generator, frames: int) -> torch.Tensor:
        """(F, frames) complex response: a cascade of resonators moving between vowels."""
        count = int(rng.integers(2, 5))
        knots = rng.uniform(
            [lo for lo, _ in FORMANT_RANGES[:count]],
            [hi for _, hi in FORMANT_RANGES[:count]],
            (3, count),
        )
        where = np.linspace(0, frames - 1, 3)
        tracks = np.stack([np.interp(np.arange(frames), where, knots[:, i]) for i in range(count)])
        centre = torch.from_numpy(tracks).float()[:, :, None]  # (count, frames, 1)
        bandwidth = torch.from_numpy(rng.uniform(60.0, 200.0, (count, 1, 1))).float()
        f = self.freqs
        # Two-pole resonators with unit gain at DC; the glottis adds -6 dB/octave above 200 Hz.
        peaks = centre**2 / ((centre**2 - f**2) ** 2 + (f * bandwidth) ** 2).sqrt()
        magnitude = peaks.prod(0) / (1 + f / 200.0)
        return _minimum_phase(magnitude).T

    def _fricative_band(self, rng: np.random.Generator, frames: int) -> torch.Tensor:
        """(F, frames) real response: a Gaussian band in the upper half of the spectrum."""
        nyquist = self.sample_rate / 2
        centre, width = rng.uniform(0.35, 0.8) * nyquist, rng.uniform(0.08, 0.25) * nyquist
        band = torch.exp(-0.5 * ((self.freqs - centre) / width) ** 2)
        return band[:, None].expand(-1, frames).to(torch.complex64)


def _minimum_phase(magnitude: torch.Tensor) -> torch.Tensor:
    """Complex spectra (..., F) with this magnitude whose impulse responses ring forward in time,
    as a vocal tract's do (a zero-phase filter would ring symmetrically around each pulse)."""
    n_fft = 2 * (magnitude.shape[-1] - 1)
    cepstrum = torch.fft.irfft(magnitude.clamp_min(1e-6).log(), n=n_fft)
    fold = torch.zeros(n_fft)
    fold[0], fold[1 : n_fft // 2], fold[n_fft // 2] = 1.0, 2.0, 1.0
    log_spectrum = torch.fft.rfft(cepstrum * fold)
    return torch.polar(log_spectrum.real.exp(), log_spectrum.imag)  # exp(); complex exp is slow


def _unit_rms(signal: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """`signal` scaled to RMS 1 where `gate` is on (everywhere if None); silence stays 0."""
    active = signal.numel() if gate is None else gate.sum().clamp_min(1.0)
    return signal / (signal.square().sum() / active).sqrt().clamp_min(1e-8)
