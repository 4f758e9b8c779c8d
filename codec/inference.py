"""`codec encode` / `codec decode`: wav <-> codes with a trained checkpoint.

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


def load_module(checkpoint: str | Path) -> CodecModule:
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    module = CodecModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    return module.eval()


def read_mono(path: str | Path, sample_rate: int) -> torch.Tensor:
    """(1, 1, S) float32 at `sample_rate`, channels mixed down."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
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
    module = load_module(checkpoint)
    warn_untrained_levels(module, num_levels or int(module.quantizer.num_active), checkpoint, "encoding")
    audio = read_mono(wav, module.sample_rate)
    payload = module.codec.encode(audio, num_levels)
    payload = {k: v for k, v in payload.items() if v is not None}
    payload["sample_rate"] = torch.tensor(module.sample_rate)
    torch.save(payload, out)
    return payload


def decode_file(checkpoint, codes_path, out, num_levels: int | None = None) -> torch.Tensor:
    """`num_levels`: decode only the first levels of the codes (default: all the codes carry)."""
    module = load_module(checkpoint)
    payload = torch.load(codes_path, map_location="cpu", weights_only=True)
    if "codes" not in payload:
        raise ValueError(f"{codes_path} holds no 'codes' (keys: {sorted(payload)}); was it written by codec encode?")
    codes = payload["codes"]
    if num_levels is not None:
        if not 1 <= num_levels <= codes.shape[1]:
            raise ValueError(f"--num-levels {num_levels}, but {codes_path} holds {codes.shape[1]} levels")
        codes = codes[:, :num_levels]
    warn_untrained_levels(module, codes.shape[1], checkpoint, "decoding")
    audio = module.codec.decode(codes, payload.get("latent_scale"),
                                payload.get("waveform_scale"), payload.get("length"))
    sf.write(str(out), audio.view(-1).numpy(), module.sample_rate, subtype="FLOAT")
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
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UntrainedLevelWarning)
        if args.command == "encode":
            payload = encode_file(args.checkpoint, args.wav, args.out, args.num_levels)
            codes = payload["codes"]
            message = f"{args.out}: {codes.shape[1]} levels x {codes.shape[2]} frames"
        else:
            audio = decode_file(args.checkpoint, args.codes, args.out, args.num_levels)
            message = f"{args.out}: {audio.shape[-1]} samples"
    for w in caught:  # ours on stderr, loudly; others back to the warnings machinery
        if issubclass(w.category, UntrainedLevelWarning):
            print(f"codec {args.command}: WARNING: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(message)
    return 0
