"""Resuming a run in its own directory, with the history and the randomness it had at the checkpoint.

`codec fit --ckpt_path=.../version_N/checkpoints/last.ckpt` continues `version_N` (the CLI reads the
directory from the path: `run_directory_of`), W&B continues the run's W&B id (`wandb_run_id`), and
the `ResumeState` callback makes the continuation the same as a run that never stopped:

- metrics.csv: the rows the run had written when the checkpoint was saved are kept, the rows it wrote
  after (steps it will train again) are dropped, so one file holds the history once;
- the global RNGs (torch, numpy, random) are saved with the checkpoint and restored, so the model's
  own randomness (k-means init, dead-code re-seeding, quantizer dropout) continues as it would have;
- the data order is the data module's part (`AudioDataModule.state_dict`).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import lightning as L
import numpy as np
import torch

from codec.metrics_csv import RunCSVLogger

KEY = "codec_resume"
_VERSION = re.compile(r"version_(\d+)$")


def run_directory_of(checkpoint: str | Path) -> Path | None:
    """`.../<name>/version_N` for a checkpoint saved under `version_N/checkpoints/`, else None."""
    path = Path(checkpoint)
    if path.parent.name == "checkpoints" and _VERSION.match(path.parent.parent.name):
        return path.parent.parent
    return None


def wandb_run_id(run_dir: Path) -> str | None:
    """The id of the newest W&B run under `run_dir/wandb/` (`[offline-]run-<time>-<id>`), if any."""
    runs = sorted((run_dir / "wandb").glob("*run-*-*"), key=lambda p: p.name.split("run-", 1)[1])
    return runs[-1].name.rsplit("-", 1)[1] if runs else None


class ResumeState(L.Callback):
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        csv_logger = _csv_logger(trainer)
        checkpoint[KEY] = {
            "metrics_rows": csv_logger.flushed_rows() if csv_logger is not None else None,
            "rng": _rng_states(),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = checkpoint.get(KEY)
        if not state:
            return
        _set_rng_states(state["rng"])
        csv_logger = _csv_logger(trainer)
        if csv_logger is not None and state["metrics_rows"] is not None:
            csv_logger.truncate_for_resume(state["metrics_rows"], int(checkpoint["global_step"]))


def _csv_logger(trainer) -> RunCSVLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, RunCSVLogger)), None)


def _rng_states() -> dict:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(_tuples(states["python"]))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _tuples(value):
    """random.setstate needs tuples; a checkpoint may hand lists back."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
