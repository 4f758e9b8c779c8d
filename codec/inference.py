"""`codec encode` / `codec decode`: wav <-> codes with a trained checkpoint.

The codes file holds what decoding needs besides the codes: the side information (scales), the
length, the model's sample rate and the input's sample format (`subtype`, e.g. PCM_16), so a
16-bit wav decodes to a 16-bit wav unless `--subtype` asks for another.

A missing or unreadable checkpoint, wav or codes file is one line naming it (exit status 2).

The checkpoint carries the quantizer's `num_active` buffer, so codes are made and
decoded with the levels the model was trained with (F1), never the default 8. An
active level that never trained (a progressive run saved right after switching a
level on) is loudly warned about (UntrainedLevelWarning, also printed on stderr by
the commands), naming the levels and the `--num-levels` that avoids them.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from codec.inspection import untrained_levels
from codec.module import CodecModule


class UntrainedLevelWarning(UserWarning):
    """Codes made or decoded with a codebook level that never trained (F1): that level adds noise."""


DEFAULT_SUBTYPE = "FLOAT"  # codes files written before the subtype was stored


class InferenceError(ValueError):
    """A file `codec encode`/`decode` cannot use; the message names it."""


def load_module(checkpoint: str | Path) -> CodecModule:
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    module = CodecModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    return module.eval()


def _load_named(checkpoint) -> CodecModule:
    """load_module, with any failure but a missing file said as one InferenceError naming the file."""
    try:
        return load_module(checkpoint)
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001 - any load failure means "not a codec checkpoint"
        detail = str(error).splitlines()[0] if str(error) else ""
        raise InferenceError(f"{checkpoint} is not a CodecModule checkpoint ({type(error).__name__}: {detail})") from error


def read_mono(path: str | Path, sample_rate: int) -> torch.Tensor:
    """(1, 1, S) float32 at `sample_rate`, channels mixed down."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError) as error:  # LibsndfileError is a RuntimeError
        raise InferenceError(f"{path} is not readable audio ({error})") from error
    if len(data) == 0:
        raise InferenceError(f"{path} holds no audio frames")
    if not np.isfinite(data).all():
        raise InferenceError(f"{path} holds {int((~np.isfinite(data)).sum())} NaN or inf samples")
    audio = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if rate != sample_rate:
        audio = torchaudio.functional.resample(audio, rate, sample_rate)
    return audio.view(1, 1, -1)


def warn_untrained_levels(module: CodecModule, num_levels: int, checkpoint, action: str) -> list[int]:
    """Warn (UntrainedLevelWarning) when any of the first `num_levels` levels never trained; returns them."""
    untrained = [i for i in untrained_levels(module.quantizer) if i < num_levels]
    if untrained:
        trained = next(i for i in range(num_levels) if i in untrained)
        names = ", ".join(f"q{i}" for i in untrained)
        advice = (f"pass --num-levels {trained} to use only the levels that trained" if trained
                  else "no level of this checkpoint has trained; train it first")
        warnings.warn(
            f"{action} with {num_levels} levels of {checkpoint}, but level(s) {names} never trained "
            f"(still at their initial codebook): their codes are noise (F1); {advice}. "
            f"`codec inspect {checkpoint}` shows every level.",
            UntrainedLevelWarning, stacklevel=3)
    return untrained


def encode_file(checkpoint, wav, out, num_levels: int | None = None) -> dict:
    module = _load_named(checkpoint)
    warn_untrained_levels(module, num_levels or int(module.quantizer.num_active), checkpoint, "encoding")
    audio = read_mono(wav, module.sample_rate)
    payload = module.codec.encode(audio, num_levels)
    payload = {k: v for k, v in payload.items() if v is not None}
    payload["sample_rate"] = torch.tensor(module.sample_rate)
    payload["subtype"] = sf.info(str(wav)).subtype  # decode writes the input's sample format back
    torch.save(payload, out)
    return payload


def load_codes(codes_path) -> dict:
    codes_path = Path(codes_path)
    if not codes_path.is_file():
        raise FileNotFoundError(f"codes file not found: {codes_path}")
    try:
        payload = torch.load(codes_path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any load failure means "not a codes file"
        raise InferenceError(f"{codes_path} is not a codes file written by codec encode ({type(error).__name__})") from error
    if not isinstance(payload, dict) or "codes" not in payload:
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise InferenceError(f"{codes_path} holds no 'codes' ({keys}); was it written by codec encode?")
    return payload


def output_subtype(out, requested: str | None, stored: str | None) -> str:
    """The subtype to write `out` with: the one asked for (checked), else the input's when the output
    format takes it, else the format's default."""
    out_format = Path(out).suffix.lstrip(".").upper() or "WAV"
    if out_format not in sf.available_formats():
        raise InferenceError(f"{out}: unknown audio format {out_format!r} (one of {sorted(sf.available_formats())})")
    if requested is not None:
        if not sf.check_format(out_format, requested.upper()):
            raise InferenceError(f"--subtype {requested} cannot be written as {out_format} "
                                 f"(one of {sorted(sf.available_subtypes(out_format))})")
        return requested.upper()
    if stored and sf.check_format(out_format, stored):
        return stored
    return sf.default_subtype(out_format)


def decode_file(checkpoint, codes_path, out, num_levels: int | None = None, subtype: str | None = None
                ) -> torch.Tensor:
    """`num_levels`: decode only the first levels of the codes (default: all the codes carry).
    `subtype`: the output's sample format (default: the encoded input's, e.g. PCM_16)."""
    payload = load_codes(codes_path)
    subtype = output_subtype(out, subtype, payload.get("subtype", DEFAULT_SUBTYPE))
    module = _load_named(checkpoint)
    codes = payload["codes"]
    if num_levels is not None:
        if not 1 <= num_levels <= codes.shape[1]:
            raise ValueError(f"--num-levels {num_levels}, but {codes_path} holds {codes.shape[1]} levels")
        codes = codes[:, :num_levels]
    warn_untrained_levels(module, codes.shape[1], checkpoint, "decoding")
    audio = module.codec.decode(codes, payload.get("latent_scale"),
                                payload.get("waveform_scale"), payload.get("length"))
    samples = audio.view(-1).numpy()
    if not subtype.startswith(("FLOAT", "DOUBLE")):
        clipped = int((np.abs(samples) > 1.0).sum())
        if clipped:
            warnings.warn(f"{clipped} decoded samples beyond full scale were clipped to write {subtype}; "
                          f"--subtype FLOAT keeps them", stacklevel=2)
        samples = np.clip(samples, -1.0, 1.0)
    sf.write(str(out), samples, module.sample_rate, subtype=subtype)
    return audio


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="codec", description="Encode wav to codes or decode codes to wav.")
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="wav -> codes (.pt)")
    enc.add_argument("checkpoint")
    enc.add_argument("wav")
    enc.add_argument("out")
    enc.add_argument("--num-levels", type=int, default=None,
                     help="levels to use (at most the checkpoint's active levels; default: all active)")
    dec = sub.add_parser("decode", help="codes (.pt) -> wav")
    dec.add_argument("checkpoint")
    dec.add_argument("codes")
    dec.add_argument("out")
    dec.add_argument("--num-levels", type=int, default=None,
                     help="decode only the first N levels of the codes (default: all of them)")
    dec.add_argument("--subtype", default=None,
                     help="sample format of the output (PCM_16, PCM_24, FLOAT, ...; default: the encoded input's)")
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UntrainedLevelWarning)
        try:
            if args.command == "encode":
                payload = encode_file(args.checkpoint, args.wav, args.out, args.num_levels)
                codes = payload["codes"]
                message = f"{args.out}: {codes.shape[1]} levels x {codes.shape[2]} frames"
            else:
                audio = decode_file(args.checkpoint, args.codes, args.out, args.num_levels, args.subtype)
                message = f"{args.out}: {audio.shape[-1]} samples"
        except (FileNotFoundError, ValueError) as error:  # InferenceError included
            print(f"codec {args.command}: {str(error).splitlines()[0]}", file=sys.stderr)
            return 2
    for w in caught:  # ours on stderr, loudly; others back to the warnings machinery
        if issubclass(w.category, UntrainedLevelWarning):
            print(f"codec {args.command}: WARNING: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(message)
    return 0
