"""A small VQ-bottleneck classifier (not a codec): the callbacks must work on any LightningModule.

F7 came from such a model: Linear -> BatchNorm -> quantizer -> Linear. With `bn_momentum=0.0` the
BatchNorm's running statistics never leave their start (mean 0, var 1) while the features sit far
from it, so eval mode feeds the quantizer inputs it never saw in training and collapses to one code.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from codec.quantize import ResidualVQ

CLASSES, FEATURES, DIM = 4, 8, 16


def clustered_classes(n: int, seed: int = 0, offset: float = 20.0) -> TensorDataset:
    centers = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(1234)) * 3 + offset
    g = torch.Generator().manual_seed(seed)  # train and validation: other samples, same classes
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    x = centers[labels] + torch.randn(n, FEATURES, generator=g)
    return TensorDataset(x, labels)


class ToyVQClassifier(L.LightningModule):
    def __init__(self, bn_momentum: float | None = None, codebook_size: int = 8, init: str = "kmeans",
                 dead_code_threshold: float = 0.1, lr: float = 1e-3):
        super().__init__()
        self.lr = lr
        self.encoder = nn.Sequential(nn.Linear(FEATURES, DIM), nn.BatchNorm1d(DIM, momentum=bn_momentum))
        self.quantizer = ResidualVQ(dim=DIM, num_quantizers=2, codebook_size=codebook_size, init=init,
                                    dead_code_threshold=dead_code_threshold)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x).unsqueeze(-1)  # (B, DIM, 1): one frame per item
        self.vq = self.quantizer(z)
        return self.head(self.vq.quantized.squeeze(-1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        return nn.functional.cross_entropy(logits, y) + sum(self.vq.losses.values())

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/accuracy", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def loaders(batch_size: int = 32):
    return (DataLoader(clustered_classes(512, seed=0), batch_size=batch_size, shuffle=True, drop_last=True),
            DataLoader(clustered_classes(128, seed=1), batch_size=batch_size))


def trainer(tmp_path, callbacks, max_steps: int = 12, val_every: int = 4) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, val_check_interval=val_every, check_val_every_n_epoch=None,
                     callbacks=callbacks, default_root_dir=tmp_path, logger=L.pytorch.loggers.CSVLogger(tmp_path),
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                     num_sanity_val_steps=0, log_every_n_steps=1, accelerator="cpu")
