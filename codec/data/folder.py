"""Real audio from a folder: scanned once, split by a stable hash, read one crop at a time."""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional as AF
from torch.utils.data import Dataset

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
_SEARCHED = "/".join(AUDIO_EXTENSIONS)
_NAMES_SHOWN = 10  # in the summary warning; the full list is in AudioFolder.skipped


class SkippedAudioWarning(UserWarning):
    """An audio file that could not be read and was left out of an AudioFolder."""


@dataclass(frozen=True)
class AudioFile:
    path: Path
    relative: str  # posix path under root: what the split hashes, the same on every machine
    frames: int
    sample_rate: int


class AudioFolder(Dataset):
    """Mono (1, S) float32 crops of the .wav/.flac/.ogg files under `root`.

    S = sample_rate * segment_seconds; files at other rates are resampled, short ones zero-padded.

    Files are found recursively and checked once; unreadable ones are skipped with a
    SkippedAudioWarning and listed in `self.skipped`. A file belongs to the validation split
    when a hash of its path relative to `root` (salted with `seed`) falls under `val_fraction`,
    so adding files never moves the others (in a tiny folder the file nearest the threshold
    may cross it so that neither split is empty). With `random_crop` every access reads a fresh
    random crop (torch's RNG, so DataLoader workers seeded by Lightning differ) and `len()`
    is `items_per_epoch` or the file count; without it the crops are fixed: evenly spread
    segments, one per file or up to `items_per_epoch` in total.
    """

    def __init__(
        self,
        root: str | Path,
        sample_rate: int = 16000,
        segment_seconds: float = 0.5,
        split: str = "train",
        val_fraction: float = 0.1,
        random_crop: bool = True,
        items_per_epoch: int | None = None,
        seed: int = 0,
    ):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if items_per_epoch is not None and items_per_epoch < 1:
            raise ValueError(f"items_per_epoch must be >= 1 or None, got {items_per_epoch}")
        self.root = Path(root)
        self.sample_rate = sample_rate
        self.num_samples = round(sample_rate * segment_seconds)
        self.split = split
        self.random_crop = random_crop
        self.items_per_epoch = items_per_epoch
        readable, self.skipped = scan_audio_files(self.root)
        self.files = split_files(readable, val_fraction, seed)[split]
        if not self.files:
            raise ValueError(
                f"the {split} split of {self.root} is empty (val_fraction={val_fraction})"
            )
        self.crops = [] if random_crop else self._fixed_crops()

    def __len__(self) -> int:
        if not self.random_crop:
            return len(self.crops)
        return self.items_per_epoch or len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} items")
        if not self.random_crop:
            return self._read(*self.crops[index])
        file = self.files[index % len(self.files)]
        latest_start = max(0, file.frames - self._frames_needed(file))
        return self._read(file, int(torch.randint(0, latest_start + 1, ())))

    def _frames_needed(self, file: AudioFile) -> int:
        """Frames at the file's own rate that resample to one segment."""
        return math.ceil(self.num_samples * file.sample_rate / self.sample_rate)

    def _fixed_crops(self) -> list[tuple[AudioFile, int]]:
        """One crop per file, or `items_per_epoch` crops dealt to files in turn (as many as each
        holds without overlap), each file's crops spread evenly over its length."""
        capacity = [max(1, f.frames // self._frames_needed(f)) for f in self.files]
        wanted = min(self.items_per_epoch or len(self.files), sum(capacity))
        counts, total = [0] * len(self.files), 0
        while total < wanted:
            for i in range(len(self.files)):
                if counts[i] < capacity[i] and total < wanted:
                    counts[i] += 1
                    total += 1
        crops = []
        for file, count in zip(self.files, counts, strict=True):
            room = max(0, file.frames - self._frames_needed(file))
            crops += [(file, round(room * (j + 0.5) / count)) for j in range(count)]
        return crops

    def _read(self, file: AudioFile, start: int) -> torch.Tensor:
        frames, _ = sf.read(
            file.path,
            start=start,
            frames=self._frames_needed(file),
            dtype="float32",
            always_2d=True,
        )
        audio = torch.from_numpy(frames).mean(dim=1)  # mono: average the channels
        if file.sample_rate != self.sample_rate:
            audio = AF.resample(audio, file.sample_rate, self.sample_rate)
        audio = audio[: self.num_samples]
        return torch.nn.functional.pad(audio, (0, self.num_samples - len(audio))).unsqueeze(0)


def scan_audio_files(root: Path) -> tuple[list[AudioFile], list[tuple[Path, str]]]:
    """(readable files, skipped (path, reason)) under `root`, sorted; warns about each skip."""
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {root} does not exist or is not a folder")
    paths = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
    )
    if not paths:
        raise FileNotFoundError(f"no audio files ({_SEARCHED}, searched recursively) in {root}")
    readable, skipped = [], []
    for path in paths:
        try:
            info = sf.info(str(path))
            if info.frames < 1:
                raise ValueError("it holds no audio frames")
            # Decoding the first and last frame catches corrupt and truncated files now,
            # not mid-epoch.
            sf.read(path, frames=1, dtype="float32")
            sf.read(path, start=info.frames - 1, frames=1, dtype="float32")
        except (RuntimeError, OSError, ValueError) as error:  # LibsndfileError is a RuntimeError
            skipped.append((path, str(error) or type(error).__name__))
            warnings.warn(
                f"skipping unreadable audio file {path}: {skipped[-1][1]}",
                SkippedAudioWarning,
                stacklevel=3,
            )
            continue
        relative = path.relative_to(root).as_posix()
        readable.append(AudioFile(path, relative, info.frames, info.samplerate))
    if not readable:
        raise ValueError(
            f"no readable audio files ({_SEARCHED}) in {root}: all {len(paths)} were skipped "
            f"({skipped[0][0].name}: {skipped[0][1]})"
        )
    if skipped:
        names = [p.relative_to(root).as_posix() for p, _ in skipped]
        more = f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else ""
        warnings.warn(
            f"skipped {len(skipped)} of {len(paths)} audio files in {root}: "
            f"{', '.join(names[:_NAMES_SHOWN])}{more}",
            SkippedAudioWarning,
            stacklevel=3,
        )
    return readable, skipped


def split_files(
    files: list[AudioFile], val_fraction: float, seed: int = 0
) -> dict[str, list[AudioFile]]:
    """{"train": ..., "val": ...} by a hash of each relative path; both non-empty when there are
    two or more files and val_fraction > 0. A lone file serves both splits (with a warning)."""
    if len(files) == 1 and val_fraction > 0:
        warnings.warn(
            f"only one audio file ({files[0].path}): validation reuses the training file",
            stacklevel=3,
        )
        return {"train": files, "val": files}
    position = {f.relative: zlib.crc32(f"{seed}:{f.relative}".encode()) / 2**32 for f in files}
    by_position = sorted(files, key=lambda f: position[f.relative])
    val_count = sum(position[f.relative] < val_fraction for f in files)
    if val_fraction > 0:
        val_count = min(max(val_count, 1), len(files) - 1)
    val = {f.relative for f in by_position[:val_count]}
    return {
        "train": [f for f in files if f.relative not in val],
        "val": [f for f in files if f.relative in val],
    }
