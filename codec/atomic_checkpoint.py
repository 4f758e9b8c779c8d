"""Checkpoints written atomically whatever `$TMPDIR` is.

Lightning's `_atomic_save` writes through an fsspec transaction, which stages the file in the
system temp folder and *moves* it into place: when `$TMPDIR` is on another filesystem (a tmpfs)
that move is a copy, and a copy interrupted half-way leaves a truncated `last.ckpt` where the
previous good one was. Here the temporary file sits beside the target, is flushed to disk and
renamed over it (`os.replace`, atomic on one filesystem), so a reader sees the old checkpoint or the
new one, never a part of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        if not isinstance(get_filesystem(path), type(get_filesystem("."))):  # remote: Lightning's own way
            return super().save_checkpoint(checkpoint, path)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
