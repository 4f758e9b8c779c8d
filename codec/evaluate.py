"""`codec eval CKPT --data DIR [--json]`: a checkpoint on a folder of audio, eval mode and train mode side by side.

Every .wav/.flac/.ogg under DIR (recursive) is read with the project's folder scan
(`codec.data.folder.scan_audio_files`: unreadable files are skipped, named and
counted), mixed to mono and resampled to the model's rate. Whole files are coded;
a file longer than `--segment-seconds` (default 30 s) is cut into equal pieces no
longer than that, to bound memory. Per mode:

- SNR and SI-SDR (torchmetrics): mean over pieces, as the validation metrics;
- mel distance (`codec.losses.mel_distance`): mean over pieces weighted by length;
- RMS ratio: sqrt(output energy / target energy) over the whole folder;
- per level: perplexity and codes used of the code histogram over the whole folder.

Both passes run under `codec.quantize.modes.side_effect_free`. Train mode is `module.train()` with
`codec.quantize.frozen_codebooks` under `torch.no_grad()`, every buffer of the
module snapshotted and restored afterwards (no EMA, init, replacement or
BatchNorm statistic survives it) and the RNG forked, so it shows what a training
forward computes (quantizer dropout included, when configured) without side
effects. Per level, the agreement is the fraction of frames whose code is the same
in both modes (F7 showed healthy usage in training and collapse in evaluation).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchmetrics.audio import ScaleInvariantSignalDistortionRatio, SignalNoiseRatio

from codec.data.folder import scan_audio_files
from codec.inference import UntrainedLevelWarning, load_module, read_mono, warn_untrained_levels
from codec.json_safe import json_safe
from codec.losses import mel_distance
from codec.quantize.modes import side_effect_free
from codec.quantize.stats import perplexity

MODES = ("eval", "train")
MIN_MEL_SAMPLES = 1025  # the mel distance's largest FFT (1024) needs more samples for its reflect padding


@dataclass
class Clip:
    file: str  # path relative to the folder
    piece: int  # index of the piece within the file
    audio: torch.Tensor  # (1, 1, S) at the model's rate


@dataclass
class ModeResult:
    snr_db: float
    si_sdr_db: float
    mel_distance: float
    rms_ratio: float
    levels: list[dict] = field(default_factory=list)  # level, perplexity, codes_used
    codes: list[torch.Tensor] = field(default_factory=list, repr=False)  # (levels, T) per clip

    def to_dict(self) -> dict:
        return {"snr_db": self.snr_db, "si_sdr_db": self.si_sdr_db, "mel_distance": self.mel_distance,
                "rms_ratio": self.rms_ratio, "levels": self.levels}


# ------------------------------------------------------------------------------------- reading
def read_folder(root: str | Path, sample_rate: int, segment_seconds: float = 30.0
                ) -> tuple[list[Clip], list[tuple[Path, str]]]:
    """(clips, skipped (path, reason)): every readable file as mono at `sample_rate`, long files
    cut into equal pieces of at most `segment_seconds`."""
    root = Path(root)
    files, skipped = scan_audio_files(root)
    limit = max(1, round(segment_seconds * sample_rate))
    clips = []
    for file in files:
        try:
            audio = read_mono(file.path, sample_rate).view(-1)
        except (RuntimeError, OSError, ValueError) as error:  # corrupt past the frames the scan checked
            skipped.append((file.path, str(error) or type(error).__name__))
            continue
        pieces = torch.tensor_split(audio, math.ceil(audio.numel() / limit)) if audio.numel() > limit else [audio]
        for j, piece in enumerate(pieces):
            clips.append(Clip(file.relative, j, piece.contiguous().view(1, 1, -1)))
    return clips, skipped


# ------------------------------------------------------------------------------------ the passes
def _mode(module: nn.Module, mode: str):
    return side_effect_free(module, train=(mode == "train"))


def run_mode(module, clips: list[Clip], mode: str, num_levels: int | None = None) -> ModeResult:
    snr, si_sdr = SignalNoiseRatio(), ScaleInvariantSignalDistortionRatio()
    mel_sum = mel_weight = pred_energy = target_energy = 0.0
    size = module.quantizer.codebook_size
    histograms: list[torch.Tensor] = []
    codes_per_clip = []
    with _mode(module, mode):
        for clip in clips:
            target = clip.audio
            out = module.codec(target, num_levels=num_levels)
            pred = out.audio.float()
            snr.update(pred.flatten(1), target.flatten(1))
            si_sdr.update(pred.flatten(1), target.flatten(1))
            n = target.shape[-1]
            pad = max(0, MIN_MEL_SAMPLES - n)
            mel = mel_distance(torch.nn.functional.pad(pred, (0, pad)), torch.nn.functional.pad(target, (0, pad)),
                               module.sample_rate)
            mel_sum += float(mel) * n
            mel_weight += n
            pred_energy += float(pred.double().pow(2).sum())
            target_energy += float(target.double().pow(2).sum())
            codes = out.vq.codes[0]  # (levels, T)
            codes_per_clip.append(codes.clone())
            if not histograms:
                histograms = [torch.zeros(size, dtype=torch.long) for _ in range(codes.shape[0])]
            for level, row in enumerate(codes):
                histograms[level] += torch.bincount(row, minlength=size)
    levels = [{"level": i, "perplexity": perplexity(h), "codes_used": int((h > 0).sum())}
              for i, h in enumerate(histograms)]
    return ModeResult(
        snr_db=float(snr.compute()), si_sdr_db=float(si_sdr.compute()), mel_distance=mel_sum / max(mel_weight, 1),
        rms_ratio=math.sqrt(pred_energy / target_energy) if target_energy > 0 else float("nan"),
        levels=levels, codes=codes_per_clip,
    )


def agreement(a: ModeResult, b: ModeResult) -> list[float]:
    """Per level: the fraction of frames whose code is the same in both results."""
    ca, cb = torch.cat(a.codes, dim=1), torch.cat(b.codes, dim=1)
    return [float((ca[i] == cb[i]).double().mean()) for i in range(min(ca.shape[0], cb.shape[0]))]


def evaluate(module, clips: list[Clip], num_levels: int | None = None) -> dict:
    """Both modes on `clips`; the module is left in eval mode with every buffer as it was."""
    if not clips:
        raise ValueError("no audio to evaluate")
    results = {mode: run_mode(module, clips, mode, num_levels) for mode in MODES}
    module.eval()
    return {
        "num_levels": num_levels or int(module.quantizer.num_active),
        "codebook_size": module.quantizer.codebook_size,
        "modes": {mode: r.to_dict() for mode, r in results.items()},
        "agreement": agreement(results["eval"], results["train"]),
    }


# ------------------------------------------------------------------------------------- printing
def format_table(report: dict) -> str:
    eval_, train = report["modes"]["eval"], report["modes"]["train"]
    lines = [
        f"{report['checkpoint']} on {report['data']}: {report['files']} files "
        f"({report['clips']} pieces, {report['seconds']:.1f} s at {report['sample_rate']} Hz), "
        f"{report['skipped']} skipped, {report['num_levels']} levels",
        f"{'metric':<16} {'eval':>10} {'train':>10}",
    ]
    for key, label in (("snr_db", "SNR dB"), ("si_sdr_db", "SI-SDR dB"), ("mel_distance", "mel distance"),
                       ("rms_ratio", "RMS ratio")):
        lines.append(f"{label:<16} {eval_[key]:>10.3f} {train[key]:>10.3f}")
    size = report["codebook_size"]
    for e, t, agree in zip(eval_["levels"], train["levels"], report["agreement"], strict=True):
        q = f"q{e['level']}"
        lines.append(f"{q + ' perplexity':<16} {e['perplexity']:>10.2f} {t['perplexity']:>10.2f}")
        lines.append(f"{q + ' codes used':<16} {str(e['codes_used']) + '/' + str(size):>10} "
                     f"{str(t['codes_used']) + '/' + str(size):>10}")
        lines.append(f"{q + ' agreement':<16} {agree:>21.3f}")
    for path in report["skipped_files"]:
        lines.append(f"skipped: {path}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="codec eval",
        description="SNR, SI-SDR, mel distance, RMS ratio and per-level usage of a checkpoint on a folder "
                    "of audio, in eval mode and in train mode (without side effects) side by side.")
    parser.add_argument("checkpoint", help="a CodecModule checkpoint (.ckpt)")
    parser.add_argument("--data", required=True, help="folder of .wav/.flac/.ogg files (searched recursively)")
    parser.add_argument("--num-levels", type=int, default=None,
                        help="levels to use (at most the checkpoint's active levels; default: all active)")
    parser.add_argument("--segment-seconds", type=float, default=30.0,
                        help="files longer than this are coded in equal pieces no longer than it (memory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv[1:])
    if args.segment_seconds <= 0:
        parser.error(f"--segment-seconds must be positive, got {args.segment_seconds}")
    try:
        module = load_module(args.checkpoint)
    except FileNotFoundError as error:
        print(f"codec eval: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - any load failure means "not a codec checkpoint"
        print(f"codec eval: {args.checkpoint} is not a CodecModule checkpoint ({type(error).__name__}: {error})",
              file=sys.stderr)
        return 2
    try:
        clips, skipped = read_folder(args.data, module.sample_rate, args.segment_seconds)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UntrainedLevelWarning)
            n = args.num_levels or int(module.quantizer.num_active)
            warn_untrained_levels(module, n, args.checkpoint, "evaluating")
        for w in caught:
            print(f"codec eval: WARNING: {w.message}", file=sys.stderr)
        result = evaluate(module, clips, args.num_levels)
    except (FileNotFoundError, ValueError) as error:
        print(f"codec eval: {error}", file=sys.stderr)
        return 2
    root = Path(args.data)
    report = {
        "checkpoint": str(args.checkpoint),
        "data": str(root),
        "sample_rate": module.sample_rate,
        "files": len({c.file for c in clips}),
        "clips": len(clips),
        "seconds": sum(c.audio.shape[-1] for c in clips) / module.sample_rate,
        "skipped": len(skipped),
        "skipped_files": [_relative(p, root) for p, _ in skipped],
        **result,
    }
    print(json.dumps(json_safe(report), indent=2) if args.json else format_table(report))
    return 0


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
