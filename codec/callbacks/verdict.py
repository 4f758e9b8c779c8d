"""Verdicts: what a monitor concluded, in the words of failure-modes.md, and the run's summary.json.

A monitor that sees one of F1..F8 records a `Verdict` (which failure, at which step, the evidence,
the remedy the reports found). `RunSummary` gathers them at the end of every fit into
`<run_dir>/summary.json`, which sweep tables and `codec compare` read back with `read_summary`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Verdict:
    failure: str   # "F1".."F8", as in failure-modes.md
    step: int      # global step at which it showed up
    message: str   # what showed up, with the evidence ("RMS ratio 0.04 while the STFT loss fell 60%")
    remedy: str    # what the reports found to help

    def line(self) -> str:
        return f"{self.failure} at step {self.step}: {self.message}. Remedy: {self.remedy}"

    def to_dict(self) -> dict:
        return asdict(self)


def read_summary(run_dir: str | Path) -> dict | None:
    """The summary.json of a run directory, or None for runs that have none (older runs, crashed ones)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())
