"""Verdicts in the monitors: the `KeepsVerdicts` mixin, and the names of `codec.diagnostics.verdict`.

A monitor records the verdicts its rules return (each finding once per run, warned as it comes) and
keeps them in its checkpoint state, so a resumed run does not raise them again. `RunSummary`
gathers every monitor's `verdicts` into `<run_dir>/summary.json`.
"""

from __future__ import annotations

import warnings

from codec.diagnostics.verdict import SUMMARY_FILE, Verdict, read_summary, verdict_tags

__all__ = ["SUMMARY_FILE", "KeepsVerdicts", "Verdict", "read_summary", "verdict_tags"]


class KeepsVerdicts:
    """Mixin for monitors: `verdicts`, each finding (failure, rule, subject) recorded once."""

    def _start_verdicts(self) -> None:
        self.verdicts: list[Verdict] = []
        self._verdict_keys: set[tuple] = set()

    def record(self, verdicts: list[Verdict]) -> list[Verdict]:
        """Keep and warn the verdicts not seen before; returns those."""
        new = []
        for verdict in verdicts:
            if verdict.key in self._verdict_keys:
                continue
            self._verdict_keys.add(verdict.key)
            self.verdicts.append(verdict)
            warnings.warn(verdict.line(), stacklevel=3)
            new.append(verdict)
        return new

    def state_dict(self) -> dict:
        return {"verdicts": [v.to_dict() for v in self.verdicts], "flagged": sorted(self._verdict_keys)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.verdicts = [Verdict.from_dict(v) for v in state_dict.get("verdicts", [])]
        self._verdict_keys = {tuple(key) for key in state_dict.get("flagged", [])}
