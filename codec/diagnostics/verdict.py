"""A verdict: which failure of docs/failure-modes.md showed up, where, on what evidence, and what helps.

Every rule in `codec.diagnostics` returns verdicts; the live monitors, `codec inspect`, `codec eval`,
`codec compare`, the sweep pruner and `summary.json` all carry the same objects, so a verdict reads
the same wherever it is raised.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"
DOCS = "docs/failure-modes.md"  # shipped in the repository; every verdict line points there


@dataclass(frozen=True)
class Verdict:
    failure: str   # "F1".."F8", as in docs/failure-modes.md
    step: int      # global step at which it showed up
    message: str   # what showed up, with the evidence ("RMS ratio 0.04 while the STFT loss fell 60%")
    remedy: str    # what helps
    rule: str = ""      # the rule that raised it, e.g. "amplitude.collapse" (README's rules table)
    subject: str = ""   # the level or metric it is about, e.g. "q0" or "val/audio/rms_ratio"
    evidence: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # the numbers

    def line(self) -> str:
        anchor = f"{DOCS}#{self.failure.lower()}"
        return f"{self.failure} at step {self.step}: {self.message}. Remedy: {self.remedy} (see {anchor})"

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes two verdicts the same finding (raised once per run): failure, rule, subject."""
        return (self.failure, self.rule, self.subject)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Verdict:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def verdict_tags(summary: dict | None, sep: str = " ") -> str:
    """The verdicts of a summary as "F3@1500 F4@1500" (the tables' short form); "" for none."""
    return sep.join(f"{v['failure']}@{v['step']}" for v in (summary or {}).get("verdicts") or [])


def read_summary(run_dir: str | Path) -> dict | None:
    """The summary.json of a run directory, or None for runs that have none (older runs, crashed ones)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def level_label(quantizer: str, level: int) -> str:
    """How a message names a level: "Q0", or "encoder.rvq Q0" when a module holds several quantizers."""
    return f"{quantizer} Q{level}" if quantizer else f"Q{level}"


def level_subject(quantizer: str, level: int) -> str:
    """A verdict's subject for a level: "q0", or "encoder.rvq/q0" (the metric names' form)."""
    return f"{quantizer}/q{level}" if quantizer else f"q{level}"
