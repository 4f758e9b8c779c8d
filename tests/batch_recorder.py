"""A callback for CLI tests (`--trainer.callbacks+=batch_recorder.BatchRecorder`): the data order a run saw."""

from pathlib import Path

import lightning as L


class BatchRecorder(L.Callback):
    """Appends `<global_step> <sum of squares>` of every training batch to <run dir>/batches.txt."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with open(Path(trainer.log_dir) / "batches.txt", "a") as f:
            f.write(f"{trainer.global_step} {float(batch.double().square().sum()):.10e}\n")
