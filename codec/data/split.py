"""Which files train and which validate: a folder's own split when it has one, else a stable hash.

In order: `val_dir` given (every file under `data_dir` trains, except any under `val_dir`; every
file under `val_dir` validates); `data_dir` holding `train/` and `val/` subfolders (each is its
split); otherwise the files of `data_dir` split by a hash of their relative paths (`val_fraction`,
stable when files are added). `FolderSplit.describe()` is the line the data module logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from codec.data.folder import AudioFile, FolderScan, hash_split, names, scan_folder

OWN_SPLIT = ("train", "val")  # subfolder names of a folder that carries its own split


@dataclass
class FolderSplit:
    train: list[AudioFile]
    val: list[AudioFile]
    how: str  # which split was used, in words
    scans: list[FolderScan] = field(default_factory=list)

    @property
    def skipped(self) -> list[tuple[Path, str]]:
        return [item for scan in self.scans for item in scan.skipped]

    @property
    def ignored(self) -> list[Path]:
        return [path for scan in self.scans for path in scan.ignored]

    def describe(self) -> str:
        line = f"data split: {self.how}: {len(self.train)} training files, {len(self.val)} validation files"
        if self.skipped:
            line += f"; {len(self.skipped)} audio files skipped at the scan"
        if self.ignored:
            root = self.scans[0].root
            line += f"; {len(self.ignored)} non-audio files ignored ({names(self.ignored, root, 5)})"
        return line


def split_folder(data_dir: str | Path, val_dir: str | Path | None = None, val_fraction: float = 0.1,
                 seed: int = 0) -> FolderSplit:
    data_dir = Path(data_dir)
    if val_dir is not None:
        val_dir = Path(val_dir)
        inside = val_dir.resolve().is_relative_to(data_dir.resolve())
        train_scan = scan_folder(data_dir, exclude=val_dir if inside else None)
        val_scan = scan_folder(val_dir)
        how = f"data_dir {data_dir} trains, val_dir {val_dir} validates"
        return FolderSplit(train_scan.readable, val_scan.readable, how, [train_scan, val_scan])
    if all((data_dir / name).is_dir() for name in OWN_SPLIT):
        train_scan, val_scan = scan_folder(data_dir / "train"), scan_folder(data_dir / "val")
        how = f"the folder's own split ({data_dir}/train and {data_dir}/val)"
        return FolderSplit(train_scan.readable, val_scan.readable, how, [train_scan, val_scan])
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    scan = scan_folder(data_dir)
    parts = hash_split(scan.readable, val_fraction, seed)
    how = (f"hash split of {data_dir} (val_fraction={val_fraction}; give it train/ and val/ subfolders "
           f"or --data.val_dir to choose the split)")
    return FolderSplit(parts["train"], parts["val"], how, [scan])
