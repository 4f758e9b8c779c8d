"""Command line: `codec` and `lightning` (the same entry point).

    codec fit -c conf/phase_b.yaml [--model.quantizer.normalization=zscore ...]
    codec validate|test|predict ...           LightningCLI's other subcommands (codec/training_cli.py)
    codec encode CKPT IN.wav OUT.codes.pt     codes of a wav file, with the checkpoint's own active levels
    codec decode CKPT IN.codes.pt OUT.wav     audio from codes
    codec inspect CKPT [--json]               codebook health of a checkpoint (F1, F2)
    codec eval CKPT --data DIR [--json]       audio metrics and usage, eval mode vs train mode (F7)
    codec sweep SWEEP.yaml [-j N]             an Optuna study over a sweep file (sweeps/)
    codec compare RUN_DIR...                  the phase comparison: tables and curves from run directories
"""

from __future__ import annotations

import importlib
import os
import sys

from codec.threads import apply_thread_settings

# Subcommands that are not LightningCLI's: name -> module whose `main(argv) -> int` gets the full argv
# (the subcommand name first). Imported lazily: `codec inspect` does not pay for importing Lightning
# (about 6 s), and `codec fit` pays for none of the tools.
TOOLS = {
    "encode": "codec.inference",
    "decode": "codec.inference",
    "inspect": "codec.inspection",
    "eval": "codec.evaluate",
    "sweep": "codec.sweep.command",
    "compare": "codec.compare",
}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    apply_thread_settings()  # this process's share of the CPUs (codec/threads.py), before Lightning loads
    if args and args[0] in TOOLS:
        sys.exit(importlib.import_module(TOOLS[args[0]]).main(args))
    from codec.training_cli import CodecCLI

    CodecCLI(args=argv)  # None: LightningCLI reads sys.argv itself


def __getattr__(name: str):
    """`from codec.cli import CodecCLI` keeps working; Lightning loads only when it is asked for."""
    if name in ("CodecCLI", "DIAGNOSTICS", "DEFAULTS"):
        return getattr(importlib.import_module("codec.training_cli"), name)
    raise AttributeError(f"module 'codec.cli' has no attribute {name!r}")


if __name__ == "__main__":
    main()
