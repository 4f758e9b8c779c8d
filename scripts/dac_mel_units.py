"""How large DAC's mel loss is in this lab's units, so adversarial weights can be compared.

DAC weighs mel 15 : adversarial 1 : feature matching 2, but its mel term is not ours: it sums
7 scales (windows 32..2048, 5..320 mels) of L1 between log10(mel magnitude ** 2), while
`codec.losses.MultiScaleMelLoss` averages 3 scales of L1 between log10(mel magnitude). The
power alone doubles the term and summing 7 scales multiplies it again, so the same 15 means a
mel term about 14x stronger relative to the adversarial terms in DAC than here. This script
measures the factor on the embedded data under a few distortions and prints the adversarial and
feature-matching weights that would give DAC's balance with this lab's mel loss.

    .venv/bin/python scripts/dac_mel_units.py [--items 64]

The DAC-form distance is written from DAC's published configuration (`conf/base.yml`,
`MelSpectrogramLoss`: clamp 1e-5, pow 2, log10, L1, summed over scales); torchaudio's mel
filterbank stands in for librosa's, which scales each band differently but cancels in a log
difference except near the clamp.
"""

from __future__ import annotations

import argparse

import torch
import torchaudio

from codec.data.synthetic import SyntheticSpeech
from codec.losses import MultiScaleMelLoss

SAMPLE_RATE = 16000
DAC_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
DAC_MELS = (5, 10, 20, 40, 80, 160, 320)
DAC_WEIGHTS = {"mel": 15.0, "adversarial": 1.0, "feature_matching": 2.0}


class DacFormMelDistance(torch.nn.Module):
    """Sum over DAC's 7 scales of L1(log10(clamp(mel, 1e-5) ** 2)) between pred and target."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, clamp: float = 1e-5):
        super().__init__()
        self.clamp = clamp
        self.scales = torch.nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=window,
                                                 hop_length=window // 4, n_mels=mels, power=1.0)
            for window, mels in zip(DAC_WINDOWS, DAC_MELS, strict=True))

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = pred.new_zeros(())
        for mel in self.scales:
            log_pred = mel(pred).clamp(min=self.clamp).pow(2).log10()
            log_target = mel(target).clamp(min=self.clamp).pow(2).log10()
            total = total + (log_pred - log_target).abs().mean()
        return total


def distortions(audio: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Outputs a codec might produce: noisy, band-limited, too quiet."""
    rms = audio.pow(2).mean(dim=-1, keepdim=True).sqrt()
    noise = torch.randn(audio.shape, generator=generator)
    return {
        "white noise at 10 dB SNR": audio + noise * rms * 10 ** (-10 / 20),
        "low-passed at 2 kHz": torchaudio.functional.lowpass_biquad(audio, SAMPLE_RATE, 2000.0),
        "6 dB too quiet, noise at 20 dB": audio * 0.5 + noise * rms * 10 ** (-20 / 20),
    }


def measure(items: int = 64) -> dict[str, tuple[float, float]]:
    """{distortion: (this lab's mel distance, DAC's)} on `items` embedded items."""
    data = SyntheticSpeech(items, sample_rate=SAMPLE_RATE, seed=1)
    audio = torch.stack([data[i] for i in range(len(data))])  # (N, 1, S)
    ours, dac = MultiScaleMelLoss(sample_rate=SAMPLE_RATE), DacFormMelDistance()
    return {name: (ours(pred, audio).item(), dac(pred, audio).item())
            for name, pred in distortions(audio, torch.Generator().manual_seed(0)).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=64, help="embedded validation items to use")
    args = parser.parse_args()
    ratios = []
    for name, (ours_value, dac_value) in measure(args.items).items():
        ratios.append(dac_value / ours_value)
        print(f"{name:32s} ours {ours_value:.3f}  DAC form {dac_value:.3f}  ratio {ratios[-1]:.1f}x")
    factor = sum(ratios) / len(ratios)
    print(f"\nDAC's mel term is {min(ratios):.1f}-{max(ratios):.1f}x this lab's (mean {factor:.1f}x).")
    print("DAC's balance with this lab's mel weight 15: "
          f"generator_weight {DAC_WEIGHTS['adversarial'] / factor:.3f}, "
          f"feature_matching_weight {DAC_WEIGHTS['feature_matching'] / factor:.3f}")


if __name__ == "__main__":
    main()
