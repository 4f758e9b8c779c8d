"""The LightningDataModule that LightningCLI builds from the `data:` section of a config."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from codec.data.folder import AudioFolder
from codec.data.sampler import ResumableSampler
from codec.data.split import split_folder
from codec.data.synthetic import SyntheticSpeech

VAL_SEED_OFFSET = 10_000  # synthetic validation items come from seeds training never draws


class AudioDataModule(L.LightningDataModule):
    """Batches (batch_size, 1, S) of mono audio, S = sample_rate * segment_seconds.

    Without `data_dir` it trains on synthetic speech-like audio generated on the fly and
    validates on held-out synthetic items (other seeds); with `data_dir` it reads random crops
    of the training files and fixed crops of the validation files. The split is the folder's
    own when it has one (`val_dir`, or `train/` and `val/` subfolders), else a stable hash of
    each file's path; the log says which, and how many files each side has.

    The training order is a function of (seed, epoch) and is saved in checkpoints (`state_dict`),
    so a resumed run reads the same batches, crops included, as the run it continues.

    Args:
        data_dir: Folder searched recursively for .wav/.flac/.ogg files; None uses the
            built-in synthetic speech data set. With `train/` and `val/` subfolders those are
            the splits.
        val_dir: Folder of validation files; every file of `data_dir` outside it trains.
        sample_rate: Rate in Hz that every item is produced at (files are resampled to it).
        segment_seconds: Length of each item in seconds.
        batch_size: Items per batch, for training and validation.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        train_items: Training items per epoch (random crops for a folder).
        val_items: Validation items: synthetic items, or at most this many fixed crops of
            the folder's validation files.
        val_fraction: Share of the folder's files held out for validation (by a stable hash
            of their relative paths) when the folder has no split of its own; ignored for
            synthetic data.
        seed: Seed of the synthetic training items (validation uses seed + 10000) and of the
            training order and crops; a folder's split does not depend on it, so runs with
            different seeds validate on the same files.
    """

    def __init__(
        self,
        data_dir: str | None = None,
        val_dir: str | None = None,
        sample_rate: int = 16000,
        segment_seconds: float = 0.5,
        batch_size: int = 8,
        num_workers: int = 0,
        train_items: int = 2000,
        val_items: int = 32,
        val_fraction: float = 0.1,
        seed: int = 0,
    ):
        super().__init__()
        if val_dir is not None and data_dir is None:
            raise ValueError(f"data.val_dir={val_dir!r} needs data.data_dir (the training files)")
        if sample_rate <= 0 or segment_seconds <= 0:
            raise ValueError(f"data.sample_rate and data.segment_seconds must be > 0, got {sample_rate}, "
                             f"{segment_seconds}")
        for name, value in (("batch_size", batch_size), ("train_items", train_items), ("val_items", val_items)):
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        if num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.data_dir = data_dir
        self.val_dir = val_dir
        self.sample_rate = sample_rate
        self.segment_seconds = segment_seconds
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_items = train_items
        self.val_items = val_items
        self.val_fraction = val_fraction
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.split_description = "synthetic speech (no data_dir)"
        self._scan_skipped: list[tuple[Path, str]] = []
        self._train_sampler: ResumableSampler | None = None
        self._resume_position: dict | None = None

    @property
    def segment_samples(self) -> int:
        return round(self.sample_rate * self.segment_seconds)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:  # setup runs once per stage (fit, validate, ...)
            return
        if self.data_dir is None:
            self.train_set = SyntheticSpeech(
                self.train_items, self.sample_rate, self.segment_seconds, self.seed
            )
            self.val_set = SyntheticSpeech(
                self.val_items, self.sample_rate, self.segment_seconds, self.seed + VAL_SEED_OFFSET
            )
            return
        split = split_folder(self.data_dir, self.val_dir, self.val_fraction)
        self.split_description = split.describe()
        rank_zero_info(self.split_description)
        self._scan_skipped = split.skipped
        if not split.train:
            raise ValueError(f"no training files: {self.split_description}")
        common = dict(sample_rate=self.sample_rate, segment_seconds=self.segment_seconds, seed=self.seed)
        self.train_set = AudioFolder(**common, files=split.train, split="train", random_crop=True,
                                     items_per_epoch=self.train_items)
        self.val_set = AudioFolder(**common, files=split.val, split="val", random_crop=False,
                                   items_per_epoch=self.val_items)
        self.val_set.check_fixed_crops()  # a bad validation file is found now, not at the first validation
        if len(self.val_set) == 0:
            rank_zero_warn(f"NO VALIDATION: every validation file is unusable ({self.val_set.bad.skipped()}); "
                           f"the run trains without validation metrics. {self.split_description}")

    def skipped_files(self) -> list[tuple[Path, str]]:
        """(path, reason) of every file left out so far: at the scan, and when read by any process."""
        skipped = list(self._scan_skipped)
        for dataset in (self.train_set, self.val_set):
            if isinstance(dataset, AudioFolder):
                skipped += dataset.bad.skipped()
        return skipped

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.batch_size:
            # drop_last would otherwise make an epoch of zero steps without a word.
            raise ValueError(
                f"train_items={len(self.train_set)} is smaller than batch_size={self.batch_size}"
            )
        draws = isinstance(self.train_set, AudioFolder) and self.train_set.random_crop
        self._train_sampler = ResumableSampler(len(self.train_set), self.seed, draws=draws)
        if self._resume_position is not None:
            self._train_sampler.resume(**self._resume_position)
            self._resume_position = None
        return self._loader(self.train_set, sampler=self._train_sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        if len(self.val_set) == 0:
            return []  # Lightning then skips validation; setup has said so loudly
        return self._loader(self.val_set, sampler=None, drop_last=False)

    def _loader(self, dataset: Dataset, sampler, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Worker seeds come from this generator, not the global RNG: creating an iterator then
            # draws nothing the model's own randomness (k-means, dead codes) would see.
            generator=torch.Generator().manual_seed(self.seed),
        )

    # ---------------------------------------------------------------- resuming
    def state_dict(self) -> dict:
        """Where the training order stands: the epoch and the items of it already trained on."""
        if self.trainer is None:
            return {}
        loop = self.trainer.fit_loop
        batches = loop.epoch_loop.batch_progress.current.ready  # fetched for training in this epoch
        return {"epoch": int(loop.epoch_progress.current.processed), "consumed": int(batches * self.batch_size)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume_position = {"epoch": int(state["epoch"]), "consumed": int(state["consumed"])}
            # Lightning asks the DataLoader itself to be stateful and otherwise warns that resuming
            # mid-epoch is unreliable; here the position travels in this data module's state instead.
            warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended")
