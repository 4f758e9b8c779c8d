"""Real audio from a folder: scanned once, read one crop at a time, bad files skipped and counted.

The scan (`scan_folder`) reads each file's header and decodes its first and last frame: cheap
enough for a large corpus, and it catches truncated and unreadable files before training. What it
cannot see (NaN samples, corruption in the middle, files of digital silence) is caught when a crop
is read: the file is marked bad for every process (`codec.data.bad_files`), named in a warning,
and the item is replaced by a crop of another file, so the run goes on.
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch.utils.data import Dataset

from codec.data.bad_files import (
    NON_FINITE,
    SILENT,
    UNREADABLE,
    BadAudio,
    BadFiles,
    SkippedAudioWarning,
)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
_SEARCHED = "/".join(AUDIO_EXTENSIONS)
_NAMES_SHOWN = 10  # in the summary warning; the full list is in FolderScan.skipped
_SILENCE_BLOCK = 1 << 16  # frames per block when checking a whole file for digital silence


@dataclass(frozen=True)
class AudioFile:
    path: Path
    relative: str  # posix path under the scanned root: what the hash split uses, the same on every machine
    frames: int
    sample_rate: int


@dataclass
class FolderScan:
    """What a folder holds: readable audio, audio files skipped (path, reason), other files ignored."""

    root: Path
    readable: list[AudioFile] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)  # not .wav/.flac/.ogg


def names(paths: list[Path], root: Path, limit: int = _NAMES_SHOWN) -> str:
    shown = [_relative(p, root) for p in paths[:limit]]
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(shown) + more


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def scan_folder(root: str | Path, exclude: Path | None = None) -> FolderScan:
    """Every file under `root` (recursively, sorted), except those under `exclude`.

    Audio files that cannot be used (a broken symbolic link, no frames, a header or first or last
    frame that does not decode) are skipped with a SkippedAudioWarning each and one summary
    warning; other files are listed in `ignored`. Raises FileNotFoundError naming the folder when
    it is missing or holds no audio file, ValueError when none is readable.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"audio folder {root} does not exist or is not a folder")
    scan = FolderScan(root)
    audio_paths = []
    for path in sorted(root.rglob("*")):
        if exclude is not None and path.is_relative_to(exclude):
            continue
        if path.is_dir():
            continue
        if path.suffix.lower() not in AUDIO_EXTENSIONS:
            scan.ignored.append(path)
            continue
        audio_paths.append(path)
        reason = _unusable(path)
        if reason is None:
            info = sf.info(str(path))
            scan.readable.append(AudioFile(path, path.relative_to(root).as_posix(), info.frames, info.samplerate))
            continue
        scan.skipped.append((path, reason))
        warnings.warn(f"skipping audio file {path}: {reason}", SkippedAudioWarning, stacklevel=2)
    if not audio_paths:
        raise FileNotFoundError(f"no audio files ({_SEARCHED}, searched recursively) in {root}")
    if not scan.readable:
        path, reason = scan.skipped[0]
        raise ValueError(f"no readable audio files ({_SEARCHED}) in {root}: all {len(audio_paths)} were "
                         f"skipped ({path.name}: {reason})")
    if scan.skipped:
        warnings.warn(f"skipped {len(scan.skipped)} of {len(audio_paths)} audio files in {root}: "
                      f"{names([p for p, _ in scan.skipped], root)}", SkippedAudioWarning, stacklevel=2)
    return scan


def _unusable(path: Path) -> str | None:
    """Why a file cannot be used, from its header and its first and last frame; None if it can."""
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link (to {path.readlink()})"
    try:
        info = sf.info(str(path))
        if info.frames < 1:
            return "it holds no audio frames"
        sf.read(path, frames=1, dtype="float32")
        sf.read(path, start=info.frames - 1, frames=1, dtype="float32")
    except (RuntimeError, OSError, ValueError) as error:  # LibsndfileError is a RuntimeError
        return str(error) or type(error).__name__
    return None


def scan_audio_files(root: Path) -> tuple[list[AudioFile], list[tuple[Path, str]]]:
    """(readable files, skipped (path, reason)) under `root`: `scan_folder` without the ignored files."""
    scan = scan_folder(root)
    return scan.readable, scan.skipped


def hash_split(files: list[AudioFile], val_fraction: float, seed: int = 0) -> dict[str, list[AudioFile]]:
    """{"train": ..., "val": ...} by a hash of each relative path; both non-empty when there are
    two or more files and val_fraction > 0. A lone file serves both splits (with a warning)."""
    if len(files) == 1 and val_fraction > 0:
        warnings.warn(f"only one audio file ({files[0].path}): validation reuses the training file",
                      stacklevel=3)
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



class AudioFolder(Dataset):
    """Mono (1, S) float32 crops of audio files, S = sample_rate * segment_seconds.

    Files at other rates are resampled, short ones zero-padded. Give `files` (from
    `codec.data.split.split_folder`, which respects a folder's own train/ and val/ split), or
    `root` and `split` to scan and split a folder here. With `random_crop` each item is a random
    crop of file `index % len(files)` and `len()` is `items_per_epoch` or the file count; an item
    asked for as `(index, draw)` (`codec.data.sampler.ResumableSampler`) seeds its crop with
    (seed, draw), so it is the same in every process and after a resume. Without `random_crop`
    the crops are fixed: evenly spread segments, one per file or up to `items_per_epoch` in total.

    A crop that does not decode, holds NaN or inf, or comes from a file of digital silence marks
    its file bad for every process (`self.bad`, a SkippedAudioWarning naming it) and the item is
    replaced by a crop of another file.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        sample_rate: int = 16000,
        segment_seconds: float = 0.5,
        split: str = "train",
        val_fraction: float = 0.1,
        random_crop: bool = True,
        items_per_epoch: int | None = None,
        seed: int = 0,
        files: list[AudioFile] | None = None,
    ):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if items_per_epoch is not None and items_per_epoch < 1:
            raise ValueError(f"items_per_epoch must be >= 1 or None, got {items_per_epoch}")
        self.sample_rate = sample_rate
        self.num_samples = round(sample_rate * segment_seconds)
        self.split = split
        self.random_crop = random_crop
        self.items_per_epoch = items_per_epoch
        self.seed = seed
        self.skipped: list[tuple[Path, str]] = []  # at the scan; read-time skips are in self.bad
        if files is None:
            if root is None:
                raise ValueError("AudioFolder needs `root` or `files`")
            from codec.data.split import split_folder

            folder_split = split_folder(root, val_fraction=val_fraction, seed=seed)
            files, self.skipped = getattr(folder_split, split), folder_split.skipped
            if not files:
                raise ValueError(f"the {split} split of {root} is empty ({folder_split.how})")
        self.root = Path(root) if root is not None else None
        self.files = list(files)
        self.bad = BadFiles([f.path for f in self.files], split)
        self.crops = [] if random_crop else self._fixed_crops()

    def __len__(self) -> int:
        if not self.random_crop:
            return len(self.crops)
        return self.items_per_epoch or len(self.files)

    def __getitem__(self, key) -> torch.Tensor:
        index, draw = key if isinstance(key, tuple) else (key, None)
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} items")
        generator = None
        if draw is not None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + draw)
        tried = 0
        while True:
            file_index, start = self._choose(index, generator, tried)
            if file_index is None:
                return self._no_file_left()
            try:
                return self._read(file_index, start)
            except BadAudio as error:
                self.bad.mark_bad(file_index, error)
                tried += 1

    def _choose(self, index: int, generator, tried: int) -> tuple[int | None, int]:
        """(file, start frame) for item `index`; after a bad read, another good file."""
        if not self.random_crop:
            for step in range(len(self.crops)):  # the next fixed crop of a good file
                file_index, start = self.crops[(index + step) % len(self.crops)]
                if not self.bad.is_bad(file_index):
                    return file_index, start
            return None, 0
        file_index = index % len(self.files)
        if self.bad.is_bad(file_index):
            good = self.bad.good()
            if not good:
                return None, 0
            file_index = good[int(torch.randint(len(good), (), generator=generator))]
        file = self.files[file_index]
        latest_start = max(0, file.frames - self._frames_needed(file))
        return file_index, int(torch.randint(0, latest_start + 1, (), generator=generator))

    def _no_file_left(self) -> torch.Tensor:
        if self.split == "train":
            raise RuntimeError(f"every training file turned out bad while reading: "
                               f"{self.bad.skipped()[:_NAMES_SHOWN]}")
        # Validation must not end the run: a silent item (weighted out of the metrics), said loudly.
        warnings.warn(f"EVERY validation file turned out bad while reading ({len(self.files)} files): "
                      f"validation metrics from here on are meaningless", SkippedAudioWarning, stacklevel=3)
        return torch.zeros(1, self.num_samples)

    def _frames_needed(self, file: AudioFile) -> int:
        """Frames at the file's own rate that resample to one segment."""
        return math.ceil(self.num_samples * file.sample_rate / self.sample_rate)

    def _fixed_crops(self) -> list[tuple[int, int]]:
        """(file index, start) of `items_per_epoch` crops (default one per file) dealt to the good files
        in turn (as many as each holds without overlap), each file's crops spread over its length."""
        good = [i for i in range(len(self.files)) if not self.bad.is_bad(i)]
        frames_needed = {i: self._frames_needed(self.files[i]) for i in good}
        capacity = {i: max(1, self.files[i].frames // frames_needed[i]) for i in good}
        wanted = min(self.items_per_epoch or len(good), sum(capacity.values()))
        counts, total = dict.fromkeys(good, 0), 0
        while total < wanted:
            for i in good:
                if counts[i] < capacity[i] and total < wanted:
                    counts[i] += 1
                    total += 1
        crops = []
        for i in good:
            room = max(0, self.files[i].frames - frames_needed[i])
            crops += [(i, round(room * (j + 0.5) / counts[i])) for j in range(counts[i])]
        return crops

    def check_fixed_crops(self) -> list[tuple[Path, str]]:
        """Read every fixed crop once (validation at setup, so a bad validation file is found before the
        first validation, not during it); crops are dealt again among the good files. Returns the skipped."""
        for index in range(len(self.crops)):
            file_index, start = self.crops[index]
            if self.bad.is_bad(file_index):
                continue
            try:
                self._read(file_index, start)
            except BadAudio as error:
                self.bad.mark_bad(file_index, error)
        self.crops = self._fixed_crops()
        return self.bad.skipped()

    def _read(self, file_index: int, start: int) -> torch.Tensor:
        file = self.files[file_index]
        wanted = min(self._frames_needed(file), max(0, file.frames - start))
        try:
            frames, _ = sf.read(file.path, start=start, frames=self._frames_needed(file),
                                dtype="float32", always_2d=True)
        except (RuntimeError, OSError, ValueError) as error:  # LibsndfileError is a RuntimeError
            raise BadAudio(UNREADABLE, f"frames {start}..{start + wanted} do not decode: "
                                       f"{str(error) or type(error).__name__}") from error
        if len(frames) < wanted:
            raise BadAudio(UNREADABLE, f"frames {start}..{start + wanted}: only {len(frames)} decoded "
                                       f"(the header says {file.frames})")
        finite = np.isfinite(frames)
        if not finite.all():
            raise BadAudio(NON_FINITE, f"{int((~finite).sum())} NaN or inf samples in frames "
                                       f"{start}..{start + len(frames)}")
        if not frames.any() and not self.bad.is_audible(file_index):
            if self._all_zero(file):
                raise BadAudio(SILENT, "every sample is zero (digital silence)")
            self.bad.mark_audible(file_index)
        audio = torch.from_numpy(frames).mean(dim=1)  # mono: average the channels
        if file.sample_rate != self.sample_rate:
            audio = AF.resample(audio, file.sample_rate, self.sample_rate)
        audio = audio[: self.num_samples]
        return torch.nn.functional.pad(audio, (0, self.num_samples - len(audio))).unsqueeze(0)

    @staticmethod
    def _all_zero(file: AudioFile) -> bool:
        """Whether the whole file is digital silence; stops at its first non-zero block."""
        try:
            for block in sf.blocks(file.path, blocksize=_SILENCE_BLOCK, dtype="float32", always_2d=True):
                if block.any():
                    return False
        except (RuntimeError, OSError, ValueError) as error:
            raise BadAudio(UNREADABLE, f"does not decode: {str(error) or type(error).__name__}") from error
        return True
