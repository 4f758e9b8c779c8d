"""Verdicts: what a monitor concluded, in the words of failure-modes.md, and the run's summary.json.

A monitor that sees one of F1..F8 records a `Verdict` (which failure, at which step, the evidence,
the remedy the reports found). `RunSummary` gathers them at the end of every fit into
`<run_dir>/summary.json`, which sweep tables and `codec compare` read back with `read_summary`.
"""

from __future__ import annotations

import json
import warnings
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


def verdict_tags(summary: dict | None, sep: str = " ") -> str:
    """The verdicts of a summary as "F3@1500 F4@1500" (the tables' short form); "" for none."""
    return sep.join(f"{v['failure']}@{v['step']}" for v in (summary or {}).get("verdicts") or [])


def read_summary(run_dir: str | Path) -> dict | None:
    """The summary.json of a run directory, or None for runs that have none (older runs, crashed ones)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


class KeepsVerdicts:
    """Mixin for monitors: the verdicts raised, each once per key (a level, a kind of failure),
    warned as they come and kept in the monitor's checkpoint state, so a resumed run does not
    raise them again. `RunSummary` reads `verdicts`."""

    def _start_verdicts(self) -> None:
        self.verdicts: list[Verdict] = []
        self._verdict_keys: set[tuple] = set()

    def raise_once(self, key: tuple, verdict: Verdict) -> None:
        if key in self._verdict_keys:
            return
        self._verdict_keys.add(key)
        self.verdicts.append(verdict)
        warnings.warn(verdict.line(), stacklevel=3)

    def state_dict(self) -> dict:
        return {"verdicts": [v.to_dict() for v in self.verdicts], "flagged": sorted(self._verdict_keys)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.verdicts = [Verdict(**v) for v in state_dict.get("verdicts", [])]
        self._verdict_keys = {tuple(key) for key in state_dict.get("flagged", [])}
