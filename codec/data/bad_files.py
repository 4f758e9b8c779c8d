"""Audio files found bad while a run reads them, shared by the main process and every DataLoader worker.

The folder scan only decodes a file's first and last frame (decoding a whole corpus at start-up
would take minutes), so NaN samples, corruption in the middle of a file and digitally silent
files show up when a crop is read, often inside a DataLoader worker. Each worker holds its own
copy of the data set, so a file marked bad in one would still be read by the others and the main
process would never hear of it. The marks therefore live in one int8 tensor in shared memory
(`share_memory_()`; forked and spawned workers map the same pages): whoever finds a bad file marks
it, warns naming it, and from then on no process reads it again.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

UNKNOWN, AUDIBLE = 0, 1  # AUDIBLE: the whole file was checked once and holds a non-zero sample
UNREADABLE, NON_FINITE, SILENT = 2, 3, 4
REASONS = {UNREADABLE: "unreadable", NON_FINITE: "NaN or inf samples", SILENT: "digitally silent (all zero)"}


class SkippedAudioWarning(UserWarning):
    """An audio file that could not be used and was left out (at the folder scan or when read)."""


class BadAudio(Exception):
    """A crop that cannot be used; `code` is one of UNREADABLE, NON_FINITE, SILENT."""

    def __init__(self, code: int, detail: str):
        super().__init__(detail)
        self.code = code


class BadFiles:
    """One shared mark per file of a data set: UNKNOWN, AUDIBLE or the reason it is bad."""

    def __init__(self, paths: list[Path], split: str):
        self.paths = list(paths)
        self.split = split
        self.marks = torch.zeros(len(self.paths), dtype=torch.int8).share_memory_()

    def is_bad(self, index: int) -> bool:
        return int(self.marks[index]) >= UNREADABLE

    def is_audible(self, index: int) -> bool:
        return int(self.marks[index]) == AUDIBLE

    def mark_audible(self, index: int) -> None:
        if int(self.marks[index]) == UNKNOWN:
            self.marks[index] = AUDIBLE

    def mark_bad(self, index: int, error: BadAudio) -> None:
        """Exclude the file from now on, in every process, and say so naming it."""
        self.marks[index] = error.code
        warnings.warn(
            f"skipping audio file {self.paths[index]} ({self.split} split) from now on: {error} "
            f"[{self.count()} of {len(self.paths)} {self.split} files skipped while reading so far]",
            SkippedAudioWarning,
            stacklevel=3,
        )

    def good(self) -> list[int]:
        return (self.marks < UNREADABLE).nonzero().flatten().tolist()

    def count(self) -> int:
        return int((self.marks >= UNREADABLE).sum())

    def skipped(self) -> list[tuple[Path, str]]:
        """(path, reason) of every file found bad so far, by any process."""
        return [(self.paths[i], REASONS[int(code)])
                for i, code in enumerate(self.marks.tolist()) if code >= UNREADABLE]
