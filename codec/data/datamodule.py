"""The LightningDataModule that LightningCLI builds from the `data:` section of a config."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from codec.data.folder import AudioFolder
from codec.data.synthetic import SyntheticSpeech

VAL_SEED_OFFSET = 10_000  # synthetic validation items come from seeds training never draws


class AudioDataModule(L.LightningDataModule):
    """Batches (batch_size, 1, S) of mono audio, S = sample_rate * segment_seconds.

    Without `data_dir` it trains on synthetic speech-like audio generated on the fly and
    validates on held-out synthetic items (other seeds); with `data_dir` it reads random crops
    of the training split of that folder and fixed crops of its validation split.

    Args:
        data_dir: Folder searched recursively for .wav/.flac/.ogg files; None uses the
            built-in synthetic speech data set.
        sample_rate: Rate in Hz that every item is produced at (files are resampled to it).
        segment_seconds: Length of each item in seconds.
        batch_size: Items per batch, for training and validation.
        num_workers: DataLoader worker processes; 0 loads in the main process.
        train_items: Training items per epoch (random crops for a folder).
        val_items: Validation items: synthetic items, or at most this many fixed crops of
            the folder's validation files.
        val_fraction: Share of the folder's files held out for validation (by a stable hash
            of their relative paths); ignored for synthetic data.
        seed: Seed of the synthetic training items (validation uses seed + 10000); a
            folder's split does not depend on it, so runs with different seeds validate
            on the same files.
    """

    def __init__(
        self,
        data_dir: str | None = None,
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
        self.save_hyperparameters()
        self.data_dir = data_dir
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
        common = dict(
            root=self.data_dir,
            sample_rate=self.sample_rate,
            segment_seconds=self.segment_seconds,
            val_fraction=self.val_fraction,
        )
        self.train_set = AudioFolder(
            **common, split="train", random_crop=True, items_per_epoch=self.train_items
        )
        self.val_set = AudioFolder(
            **common, split="val", random_crop=False, items_per_epoch=self.val_items
        )

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.batch_size:
            # drop_last would otherwise make an epoch of zero steps without a word.
            raise ValueError(
                f"train_items={len(self.train_set)} is smaller than batch_size={self.batch_size}"
            )
        return self._loader(self.train_set, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False, drop_last=False)

    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
