"""Audio examples at every validation: what the codec sounds like, not only what its metrics say.

At each validation the first `num_items` items of the first validation batch (the same items every
time) go through the model once more in eval mode, without side effects, and are written to the run
directory as

    <run_dir>/examples/step_NNNNNN/NN_input.wav, NN_decoded.wav (16-bit PCM), NN_spectrogram.png

(NNNNNN: the step validation metrics are logged at), and logged to every W&B logger as players and
spectrogram images (`val/examples/*`). `codec listen` turns them into one HTML page per comparison.
A few items, about 0.2 s of work per validation: cheap next to validation itself.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import soundfile as sf
import torch
from lightning.pytorch.utilities import rank_zero_only

from codec.quantize.modes import side_effect_free
from codec.runs import EXAMPLES_DIR


class AudioExamples(L.Callback):
    """Args:
    num_items: validation items kept as examples (0 turns the callback off).
    max_seconds: each example is cut to at most this many seconds.
    """

    def __init__(self, num_items: int = 2, max_seconds: float = 4.0):
        if num_items < 0:
            raise ValueError(f"AudioExamples.num_items must be >= 0, got {num_items}")
        self.num_items = num_items
        self.max_seconds = max_seconds
        self._inputs: torch.Tensor | None = None
        self.written: list[Path] = []  # example folders, in order

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._inputs = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._inputs is None and self.num_items and not trainer.sanity_checking:
            inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
            if isinstance(inputs, torch.Tensor):
                self._inputs = inputs[: self.num_items].detach().clone()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        inputs, self._inputs = self._inputs, None
        if inputs is None or trainer.log_dir is None:
            return
        # The step validation's metrics are filed under: the optimizer steps taken (validation_schedule.py).
        step = trainer.global_step
        sample_rate = int(getattr(pl_module, "sample_rate", 0) or getattr(trainer.datamodule, "sample_rate", 16000))
        limit = int(self.max_seconds * sample_rate)
        with side_effect_free(pl_module, train=False):
            output = pl_module(inputs)
        decoded = getattr(output, "audio", output)
        pairs = [(x.reshape(-1)[:limit].float().cpu().numpy(), y.reshape(-1)[:limit].float().cpu().numpy())
                 for x, y in zip(inputs, decoded, strict=True)]
        self._write(trainer, Path(trainer.log_dir) / EXAMPLES_DIR / f"step_{step:06d}", step, pairs, sample_rate)

    @rank_zero_only
    def _write(self, trainer, folder: Path, step: int, pairs: list[tuple[np.ndarray, np.ndarray]],
               sample_rate: int) -> None:
        from codec.plots import spectrogram_png

        folder.mkdir(parents=True, exist_ok=True)
        images = []
        for i, (source, decoded) in enumerate(pairs):
            for name, audio in (("input", source), ("decoded", decoded)):
                # 16-bit PCM plays in every browser; samples beyond full scale are clipped there only.
                sf.write(folder / f"{i:02d}_{name}.wav", np.clip(audio, -1, 1), sample_rate, subtype="PCM_16")
            images.append(spectrogram_png([("input", source), ("decoded", decoded)], sample_rate,
                                          folder / f"{i:02d}_spectrogram.png", title=f"step {step}, item {i}"))
        self.written.append(folder)
        self._to_wandb(trainer, step, pairs, images, sample_rate)

    @staticmethod
    def _to_wandb(trainer, step: int, pairs, images: list[Path], sample_rate: int) -> None:
        from lightning.pytorch.loggers import WandbLogger

        captions = [f"item {i}" for i in range(len(pairs))]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                rates = [sample_rate] * len(pairs)
                logger.log_audio("val/examples/input", [s for s, _ in pairs], step=step, sample_rate=rates,
                                 caption=captions)
                logger.log_audio("val/examples/decoded", [d for _, d in pairs], step=step, sample_rate=rates,
                                 caption=captions)
                logger.log_image("val/examples/spectrogram", [str(p) for p in images], step=step, caption=captions)
