"""`codec eval CKPT --data DIR [--json]`: a checkpoint on a folder of audio, eval mode and train mode side by side.

Every .wav/.flac/.ogg under DIR (recursive) is read with the project's folder scan
(`codec.data.folder.scan_audio_files`: unreadable files are skipped, named and
counted), mixed to mono and resampled to the model's rate. Whole files are coded;
a file longer than `--segment-seconds` (default 30 s) is cut into equal pieces no
longer than that, to bound memory. Per mode, the metrics are validation's own accumulators
(`codec.metrics.AudioMetrics` and `CodeUsage`) fed one piece at a time, so every key means
what `val/audio/<key>` and `val/rvq/*` mean in training: SNR and SI-SDR (means over non-silent
pieces), mel_l1 (also per band) and stft_distance (means weighted by length), rms_ratio,
rms_ratio_no_dc and per-band ratios (over the whole folder), correlation, dc_offset, dc_fraction, loudness_diff_lu and
loudness_diff_max_lu (BS.1770 loudness, output - target, in LU), silent_items,
`stoi` with --stoi; per level perplexity, codes used and bits used (usage entropy), and the
nominal and used bitrates.

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

from codec.data.folder import scan_audio_files
from codec.inference import UntrainedLevelWarning, load_module, read_mono, warn_untrained_levels
from codec.json_safe import json_safe
from codec.metrics import AudioMetrics, CodeUsage
from codec.quantize.modes import side_effect_free

MODES = ("eval", "train")


@dataclass
class Clip:
    file: str  # path relative to the folder
    piece: int  # index of the piece within the file
    audio: torch.Tensor  # (1, 1, S) at the model's rate


@dataclass
class ModeResult:
    audio: dict[str, float]  # AudioMetrics' keys: snr_db, si_sdr_db, mel_l1, rms_ratio, ... (validation's val/audio/*)
    usage: dict  # CodeUsage's: levels (level, perplexity, codes_used, bits_used), bitrate_kbps, bitrate_used_kbps
    codes: list[torch.Tensor] = field(default_factory=list, repr=False)  # (levels, T) per clip

    def to_dict(self) -> dict:
        return {**self.audio, **self.usage}


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


def run_mode(module, clips: list[Clip], mode: str, num_levels: int | None = None, stoi: bool = False) -> ModeResult:
    """The validation accumulators (`codec.metrics`) over every clip, one clip at a time."""
    audio = AudioMetrics(module.sample_rate, stoi=stoi)
    usage = CodeUsage(module.quantizer.num_quantizers, module.quantizer.codebook_size, module.frame_rate)
    codes_per_clip = []
    with _mode(module, mode):
        for clip in clips:
            out = module.codec(clip.audio, num_levels=num_levels)
            audio.update(out.audio, clip.audio)
            usage.update(out.vq.codes)
            codes_per_clip.append(out.vq.codes[0].clone())  # (levels, T)
    return ModeResult({k: float(v) for k, v in audio.compute().items()}, usage.compute(), codes_per_clip)


def agreement(a: ModeResult, b: ModeResult) -> list[float]:
    """Per level: the fraction of frames whose code is the same in both results."""
    ca, cb = torch.cat(a.codes, dim=1), torch.cat(b.codes, dim=1)
    return [float((ca[i] == cb[i]).double().mean()) for i in range(min(ca.shape[0], cb.shape[0]))]


def evaluate(module, clips: list[Clip], num_levels: int | None = None, stoi: bool = False, step: int = 0) -> dict:
    """Both modes on `clips`, and the verdicts of the diagnostics rules on them (`step`: the
    checkpoint's); the module is left in eval mode with every buffer as it was."""
    if not clips:
        raise ValueError("no audio to evaluate")
    results = {mode: run_mode(module, clips, mode, num_levels, stoi) for mode in MODES}
    module.eval()
    report = {
        "num_levels": num_levels or int(module.quantizer.num_active),
        "codebook_size": module.quantizer.codebook_size,
        "modes": {mode: r.to_dict() for mode, r in results.items()},
        "agreement": agreement(results["eval"], results["train"]),
    }
    frames = sum(codes.shape[-1] for codes in results["eval"].codes)
    report["verdicts"] = [v.to_dict() for v in judge(report, frames, step)]
    return report


def judge(report: dict, frames: int, step: int = 0) -> list:
    """The diagnostics rules on one measurement: the output level (codec.diagnostics.amplitude, without
    the patience a run has), each level's eval-mode usage over `frames` rows (usage.validation) and
    train mode against eval mode (F7), at the checkpoint's `step`."""
    from codec.diagnostics.amplitude import judge_snapshot
    from codec.diagnostics.consistency import judge_modes
    from codec.diagnostics.usage import UsageTracker

    eval_, train = report["modes"]["eval"], report["modes"]["train"]
    verdicts = judge_snapshot({f"val/audio/{k}": v for k, v in eval_.items() if isinstance(v, (int, float))}, step)
    usage = UsageTracker(codebook_size=report["codebook_size"])
    for e, t, agree in zip(eval_["levels"], train["levels"], report["agreement"], strict=True):
        verdicts += usage.validation(step, e["level"], e["perplexity"], frames)
        verdict = judge_modes(step, e["level"], {
            "perplexity_train_mode": t["perplexity"], "perplexity_eval_mode": e["perplexity"],
            "codes_used_train_mode": t["codes_used"], "codes_used_eval_mode": e["codes_used"], "agreement": agree})
        verdicts += [verdict] if verdict is not None else []
    return verdicts


# ------------------------------------------------------------------------------------- printing
TABLE_ROWS = (("snr_db", "SNR dB"), ("si_sdr_db", "SI-SDR dB"), ("mel_l1", "mel distance"),
              ("stft_distance", "STFT distance"), ("rms_ratio", "RMS ratio"), ("rms_ratio_no_dc", "RMS ratio no DC"),
              ("correlation", "correlation"), ("dc_offset", "DC offset"), ("dc_fraction", "DC fraction"),
              ("loudness_diff_lu", "loudness diff LU"), ("loudness_diff_max_lu", "max |loud. diff|"),
              ("stoi", "STOI"), ("silent_items", "silent pieces"), ("bitrate_kbps", "kbit/s nominal"),
              ("bitrate_used_kbps", "kbit/s used"))


def band_label(key: str) -> str:
    """`mel_l1_2000_8000hz` -> `mel 2000-8000` (the per-band keys of `AudioMetrics`)."""
    name, low, high = key.removesuffix("hz").rsplit("_", 2)
    return f"{'mel' if name == 'mel_l1' else 'RMS'} {low}-{high}"


def format_table(report: dict) -> str:
    eval_, train = report["modes"]["eval"], report["modes"]["train"]
    lines = [
        f"{report['checkpoint']} on {report['data']}: {report['files']} files "
        f"({report['clips']} pieces, {report['seconds']:.1f} s at {report['sample_rate']} Hz), "
        f"{report['skipped']} skipped, {report['num_levels']} levels",
        f"{'metric':<16} {'eval':>10} {'train':>10}",
    ]
    rows = [*TABLE_ROWS, *((key, band_label(key)) for key in eval_ if key.endswith("hz"))]
    for key, label in rows:
        if key in eval_:
            lines.append(f"{label:<16} {eval_[key]:>10.3f} {train[key]:>10.3f}")
    size = report["codebook_size"]
    for e, t, agree in zip(eval_["levels"], train["levels"], report["agreement"], strict=True):
        q = f"q{e['level']}"
        lines.append(f"{q + ' perplexity':<16} {e['perplexity']:>10.2f} {t['perplexity']:>10.2f}")
        lines.append(f"{q + ' codes used':<16} {str(e['codes_used']) + '/' + str(size):>10} "
                     f"{str(t['codes_used']) + '/' + str(size):>10}")
        lines.append(f"{q + ' bits used':<16} {e['bits_used']:>10.2f} {t['bits_used']:>10.2f}")
        lines.append(f"{q + ' agreement':<16} {agree:>21.3f}")
    for path in report["skipped_files"]:
        lines.append(f"skipped: {path}")
    from codec.diagnostics.verdict import Verdict

    verdicts = [Verdict.from_dict(v) for v in report.get("verdicts", [])]
    lines += [v.line() for v in verdicts] or ["no failure of F1..F8 on this folder (docs/failure-modes.md)"]
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
    parser.add_argument("--stoi", action="store_true",
                        help="also STOI (short-time objective intelligibility, torchmetrics + pystoi): for speech "
                             "of a few seconds or more per file; needs pip install 'codec-lab[perceptual]'")
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
        result = evaluate(module, clips, args.num_levels, args.stoi, checkpoint_step(args.checkpoint))
    except (FileNotFoundError, ValueError, ImportError) as error:
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


def checkpoint_step(path: str | Path) -> int:
    """The global step a checkpoint was saved at (0 when it does not say)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return int(checkpoint.get("global_step") or 0) if isinstance(checkpoint, dict) else 0


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
