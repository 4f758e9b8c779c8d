"""`codec encode` / `codec decode`: wav <-> codes with a trained checkpoint.

The checkpoint carries the quantizer's `num_active` buffer, so codes are made and
decoded with the levels the model was trained with (F1), never the default 8.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from codec.module import CodecModule


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


def encode_file(checkpoint, wav, out, num_levels: int | None = None) -> dict:
    module = load_module(checkpoint)
    audio = read_mono(wav, module.sample_rate)
    payload = module.codec.encode(audio, num_levels)
    payload = {k: v for k, v in payload.items() if v is not None}
    payload["sample_rate"] = torch.tensor(module.sample_rate)
    torch.save(payload, out)
    return payload


def decode_file(checkpoint, codes_path, out) -> torch.Tensor:
    module = load_module(checkpoint)
    payload = torch.load(codes_path, map_location="cpu", weights_only=True)
    if "codes" not in payload:
        raise ValueError(f"{codes_path} holds no 'codes' (keys: {sorted(payload)}); was it written by codec encode?")
    audio = module.codec.decode(payload["codes"], payload.get("latent_scale"),
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
    args = parser.parse_args(argv)
    if args.command == "encode":
        payload = encode_file(args.checkpoint, args.wav, args.out, args.num_levels)
        codes = payload["codes"]
        print(f"{args.out}: {codes.shape[1]} levels x {codes.shape[2]} frames")
    else:
        audio = decode_file(args.checkpoint, args.codes, args.out)
        print(f"{args.out}: {audio.shape[-1]} samples")
    return 0
