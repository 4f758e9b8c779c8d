"""metrics.csv for a run directory that may already exist: never deleted, there from the start, resumable.

Lightning's CSV writer deletes an existing metrics.csv (printing "Experiment logs directory ...
exists and is not empty") whenever the version folder holds anything, which ours always does
(config.yaml and wandb/ come first); it writes the file only at the first flush, so a run that
fails before then leaves none; and on a second run in the same folder it would rewrite the header
with only the new keys. `RunCSVLogger` creates the file when the run starts, flushes it when the run
fails, and continues an existing file (its header, its rows) when a run resumes in its directory.
"""

from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only


class _ContinuingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # the run directory is ours: keep what is there
        pass

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):
            self.metrics_keys = sorted(self._read()[0])
        else:
            with self._fs.open(self.metrics_file_path, "w", newline=""):
                pass  # exists from the start: a run that fails before its first log still has one

    def _read(self) -> tuple[list[str], list[dict]]:
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
            return list(reader.fieldnames or []), rows

    def keep_rows(self, keep) -> int:
        """Rewrite the file with the rows for which `keep(index, row)` is true; returns how many were dropped."""
        self.save()
        fieldnames, rows = self._read()
        kept = [row for i, row in enumerate(rows) if keep(i, row)]
        tmp = self.metrics_file_path + ".tmp"
        with self._fs.open(tmp, "w", newline="") as file:
            if fieldnames:
                writer = csv.DictWriter(file, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(kept)
        os.replace(tmp, self.metrics_file_path)
        return len(rows) - len(kept)

    def row_count(self) -> int:
        self.save()
        return len(self._read()[1]) if self._fs.isfile(self.metrics_file_path) else 0


class RunCSVLogger(CSVLogger):
    """CSVLogger writing `<save_dir>/<name>/version_<version>/metrics.csv` that continues an existing file."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _ContinuingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.experiment.save()  # also when nothing was logged: the file exists, flushed

    @rank_zero_only
    def flushed_rows(self) -> int:
        """Rows on disk after flushing what is buffered."""
        return self.experiment.row_count()

    @rank_zero_only
    def truncate_for_resume(self, rows: int, step: int) -> int:
        """Keep the first `rows` rows (those written when the checkpoint was saved) and any later row filed
        before `step` (Lightning logs a step's training metrics after its checkpoint hook); returns how
        many rows were dropped: the resumed run logs them again."""
        return self.experiment.keep_rows(lambda i, row: i < rows or int(float(row.get("step") or 0)) < step)
