"""Command line: `codec` and `lightning` (the same entry point).

    codec fit -c conf/phase_b.yaml [--model.quantizer.normalization=zscore ...]
    codec validate|test|predict ...           LightningCLI's other subcommands (codec/training_cli.py)
    codec encode CKPT IN.wav OUT.codes.pt     codes of a wav file, with the checkpoint's own active levels
    codec decode CKPT IN.codes.pt OUT.wav     audio from codes
    codec inspect CKPT [--json]               codebook health of a checkpoint (F1, F2)
    codec eval CKPT --data DIR [--json]       audio metrics and usage, eval mode vs train mode (F7)
    codec sweep SWEEP.yaml [-j N]             an Optuna study over a sweep file (sweeps/)
    codec compare RUN_DIR...                  the phase comparison: tables and curves from run directories
    codec reproduce [--steps N]               the reports' phases at real length, beside the reports' outcomes
    codec listen RUN_DIR...                   one HTML page of audio examples and spectrograms, side by side

`codec --help` (or `codec` alone) lists every subcommand; `codec SUBCOMMAND --help` describes one.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys

from codec.threads import apply_thread_settings

# Subcommands that are not LightningCLI's: name -> module whose `main(argv) -> int` gets the full argv
# (the subcommand name first), or (module, one-line help). Imported lazily: `codec inspect` does not pay
# for importing Lightning (about 6 s), and `codec fit` pays for none of the tools. Adding a tool is one
# line here; without a help text, `codec --help` shows the first line of the module's docstring.
TOOLS = {
    "encode": ("codec.inference", "codes of a wav file, with the checkpoint's own active levels"),
    "decode": ("codec.inference", "audio from codes (the input's sample format unless --subtype)"),
    "inspect": ("codec.inspection", "codebook health of a checkpoint (F1, F2)"),
    "eval": ("codec.evaluate", "audio metrics and code usage on a folder, eval mode vs train mode (F7)"),
    "sweep": ("codec.sweep.command", "an Optuna study over a sweep file (sweeps/)"),
    "compare": ("codec.compare", "the phase comparison: tables and curves from run directories"),
    "listen": ("codec.listen", "one HTML page of audio examples and spectrograms, side by side"),
    "reproduce": ("codec.reproduce.command", "the reports' phases at real length, beside the reports' outcomes"),
}

# LightningCLI's subcommands (codec/training_cli.py), described without importing Lightning.
TRAINING = {
    "fit": "train a codec: codec fit -c conf/phase_b.yaml [--key=value ...]",
    "validate": "validation metrics of a checkpoint: codec validate -c CONFIG --ckpt_path CKPT",
    "test": "the test loop of a checkpoint (LightningCLI)",
    "predict": "the predict loop of a checkpoint (LightningCLI)",
}


def tool_module(name: str) -> str:
    entry = TOOLS[name]
    return entry[0] if isinstance(entry, tuple) else entry


def tool_help(name: str) -> str:
    entry = TOOLS[name]
    if isinstance(entry, tuple):
        return entry[1]
    spec = importlib.util.find_spec(entry)  # the docstring's first line, without importing the module
    with open(spec.origin, encoding="utf-8") as source:
        docstring = ast.get_docstring(ast.parse(source.read())) or ""
    return docstring.strip().splitlines()[0] if docstring.strip() else ""


def usage() -> str:
    width = max(map(len, [*TRAINING, *TOOLS])) + 2
    lines = ["usage: codec SUBCOMMAND [options]      (`codec SUBCOMMAND --help` for its options)", "",
             "training (LightningCLI; also `lightning SUBCOMMAND`):"]
    lines += [f"  {name:<{width}}{text}" for name, text in TRAINING.items()]
    lines += ["", "tools:"]
    lines += [f"  {name:<{width}}{tool_help(name)}" for name in TOOLS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    if not args or args[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        sys.exit(0 if args else 2)
    apply_thread_settings()  # this process's share of the CPUs (codec/threads.py), before Lightning loads
    if args[0] in TOOLS:
        sys.exit(importlib.import_module(tool_module(args[0])).main(args))
    from codec.training_cli import CodecCLI

    CodecCLI(args=argv)  # None: LightningCLI reads sys.argv itself


def __getattr__(name: str):
    """`from codec.cli import CodecCLI` keeps working; Lightning loads only when it is asked for."""
    if name in ("CodecCLI", "DIAGNOSTICS", "DEFAULTS"):
        return getattr(importlib.import_module("codec.training_cli"), name)
    raise AttributeError(f"module 'codec.cli' has no attribute {name!r}")


if __name__ == "__main__":
    main()
