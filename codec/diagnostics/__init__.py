"""The rules that turn what a run shows into verdicts on the failures of docs/failure-modes.md.

One place for each failure's rule, thresholds, evidence and remedy, used everywhere a verdict is
reached: the live monitors (`codec.callbacks`), `codec inspect`, `codec eval`, `codec compare`,
`codec reproduce`, the sweep pruner and `summary.json`.

    verdict.py      Verdict: failure, step, message (with the evidence), remedy, rule, subject
    amplitude.py    F3 (and F4): collapse, explosion, DC offset, divergence, from validation metrics
    usage.py        F1/F2 from code usage: per step, per window, per validation, after a grace period
    codebook.py     F1/F2 from a level's stored state: untrained, drifted values, dead codes
    consistency.py  F7: train mode vs eval mode
    replay.py       the same rules over a run directory's metrics.csv (compare, reproduce)

Nothing here imports Lightning.
"""

from codec.diagnostics.amplitude import AmplitudeRule, AmplitudeTracker
from codec.diagnostics.codebook import CodebookRule
from codec.diagnostics.consistency import ConsistencyRule, judge_modes
from codec.diagnostics.usage import UsageRule, UsageTracker
from codec.diagnostics.verdict import DOCS, SUMMARY_FILE, Verdict, read_summary, verdict_tags

__all__ = ["DOCS", "SUMMARY_FILE", "AmplitudeRule", "AmplitudeTracker", "CodebookRule", "ConsistencyRule",
           "UsageRule", "UsageTracker", "Verdict", "judge_modes", "read_summary", "verdict_tags"]
