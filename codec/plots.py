"""What the PNGs of `codec compare`, sweep results and audio examples share: axis labels in words
with units, y ranges that do not blow noise up into a cliff, and the spectrogram pair.

matplotlib runs headless (Agg); importing this module does not import it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

# Metric name -> axis label in words, with the unit. Per-level and per-band names are matched below.
LABELS = {
    "val/audio/snr_db": "SNR (dB)",
    "val/audio/si_sdr_db": "SI-SDR (dB)",
    "val/audio/mel_l1": "mel distance (log-mel L1)",
    "val/audio/stft_distance": "STFT distance",
    "val/audio/rms_ratio": "RMS ratio, decoded / input",
    "val/audio/rms_ratio_no_dc": "RMS ratio without DC, decoded / input",
    "val/audio/correlation": "correlation, decoded vs input",
    "val/audio/dc_offset": "DC offset of decoded (full scale 1)",
    "val/audio/dc_fraction": "DC share of decoded energy (0-1)",
    "val/audio/loudness_diff_lu": "loudness, output - target (LU)",
    "val/rvq/bitrate_used_kbps": "bitrate used (kbit/s)",
    "val/rvq/utilization": "codebook utilisation (%)",
    "train/rvq/utilization": "codebook utilisation (%)",
    "train/loss/total": "total training loss",
    "train/params/out_proj/weight_norm": "out_proj weight norm (L2)",
    "train/params/final_conv/weight_norm": "final_conv weight norm (L2)",
}
PATTERNS = [
    (r"(val|train)/rvq/q(\d+)/perplexity", r"perplexity of level \2 (codes)"),
    (r"(val|train)/rvq/q(\d+)/codes_used", r"codes used by level \2"),
    (r"val/audio/rms_ratio_(\d+)_(\d+)hz", r"RMS ratio \1-\2 Hz, decoded / input"),
    (r"train/loss/(\w+)", r"training loss: \1"),
]


def axis_label(key: str) -> str:
    """`val/audio/snr_db` -> "SNR of the decoded audio (dB)"; unknown names are shown as they are."""
    if key in LABELS:
        return LABELS[key]
    for pattern, label in PATTERNS:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, label, key)
    return key


def unit_of(key: str) -> str:
    """The unit a value of `key` is read in: "dB", "ratio" or "" (the y-range rule uses it)."""
    if key.endswith("_db"):
        return "dB"
    if "rms_ratio" in key:
        return "ratio"
    return ""


# The smallest y span shown per unit: a 0.05 dB difference between arms is noise, and an axis
# zoomed onto it would draw a cliff. Other quantities: at least 10 % of their largest magnitude.
MIN_SPAN = {"dB": 3.0, "ratio": 0.2}


def y_limits(values, key: str) -> tuple[float, float]:
    """(low, high) that hold every value (error bars included) and span at least MIN_SPAN."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    floor = MIN_SPAN.get(unit_of(key), 0.1 * max(abs(low), abs(high)) or 1.0)
    span = max(high - low, floor) * 1.1  # a little air above and below
    middle = (low + high) / 2
    return middle - span / 2, middle + span / 2


def plain_log_axis(ax) -> None:
    """Tick labels of a log y axis as plain numbers (0.1, 2, 300) rather than powers of ten; minor
    ticks are labelled too when the axis spans little more than a decade (otherwise they crowd)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if high / max(low, 1e-300) < 20 else NullFormatter())


def matplotlib_pyplot():
    """pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def spectrogram_png(signals: list[tuple[str, np.ndarray]], sample_rate: int, path: Path, title: str = "") -> Path:
    """Log-magnitude spectrograms side by side (input | decoded) on one colour scale (the loudest
    bin to 80 dB below it), as a small PNG: about 0.1 s each, so a callback can draw them at every
    validation."""
    plt = matplotlib_pyplot()
    n_fft = 512 if sample_rate >= 16000 else 256
    spectra = [(name, _log_spectrogram(x, n_fft)) for name, x in signals]
    top = max(float(s.max()) for _, s in spectra)
    fig, axes = plt.subplots(1, len(spectra), figsize=(2.8 * len(spectra), 2.4), sharey=True, squeeze=False)
    seconds = max(len(x) for _, x in signals) / sample_rate
    for ax, (name, spectrum) in zip(axes[0], spectra, strict=True):
        ax.imshow(spectrum, origin="lower", aspect="auto", cmap="magma", vmin=top - 80, vmax=top,
                  extent=(0, seconds, 0, sample_rate / 2000), interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("time (s)", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel("frequency (kHz)", fontsize=7)
    fig.suptitle((f"{title}; " if title else "") + "level: dark = 80 dB below the loudest bin", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _log_spectrogram(x: np.ndarray, n_fft: int) -> np.ndarray:
    """(frequency, frame) magnitudes in dB of a Hann-windowed STFT, hop n_fft/4."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    hop = n_fft // 4
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    return 20 * np.log10(np.abs(np.fft.rfft(frames, axis=1)).T + 1e-8)
