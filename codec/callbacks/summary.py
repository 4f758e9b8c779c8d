"""Run summary: at the end of every fit, `summary.json` in the run directory and a verdict block.

Gathers the verdicts of every callback that keeps a `verdicts` list (the monitors), the final
value of every logged metric, how the run ended and the quantizers' active levels, so that a
sweep table or `codec compare` can say which of F1..F8 showed up in a run without re-reading its
metrics. Written also when the run fails (status "failed", with the error).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from codec.callbacks.discovery import find_quantizers
from codec.callbacks.verdict import SUMMARY_FILE, Verdict
from codec.diagnostics.verdict import DOCS


class RunSummary(L.Callback):
    """Args:
    print_verdicts: print the verdict block to the console at the end of the fit.
    """

    def __init__(self, print_verdicts: bool = True):
        self.print_verdicts = print_verdicts
        self.path: Path | None = None
        self.summary: dict[str, Any] | None = None

    def on_fit_end(self, trainer, pl_module) -> None:
        reached_max = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        # should_stop before max_steps: a monitor (or early stopping) ended the run.
        self.write(trainer, pl_module, "stopped" if trainer.should_stop and not reached_max else "finished")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Ctrl-C, and SIGTERM (Lightning raises its SIGTERMException, a SystemExit, at the next step).
        status = "interrupted" if isinstance(exception, (KeyboardInterrupt, SystemExit)) else "failed"
        self.write(trainer, pl_module, status, error=f"{type(exception).__name__}: {exception}")

    @rank_zero_only
    def write(self, trainer, pl_module, status: str, error: str | None = None) -> None:
        verdicts = collect_verdicts(trainer)
        stops = [cb.stop_verdict for cb in trainer.callbacks if getattr(cb, "stop_verdict", None) is not None]
        summary: dict[str, Any] = {
            "status": status,
            "steps": int(trainer.global_step),
            "collapsed": any(v.rule == "amplitude.collapse" for v in verdicts),
            "stopped_by": stops[0].to_dict() if stops else None,
            "verdicts": [v.to_dict() for v in verdicts],
            "failures": sorted({v.failure for v in verdicts}),
            "final": final_metrics(trainer),
            "quantizers": {name or "quantizer": {"levels": rvq.num_quantizers, "active": int(rvq.num_active)}
                           for name, rvq in find_quantizers(pl_module)},
        }
        if error is not None:
            summary["error"] = error
        self.summary = summary
        # The first logger's directory, not `trainer.log_dir`: that one is a broadcast, which would
        # wait forever for ranks that never enter this rank-zero-only method (DDP).
        log_dir = _run_dir(trainer)
        if log_dir is not None:
            self.path = Path(log_dir) / SUMMARY_FILE
            _write_atomically(self.path, json.dumps(summary, indent=2, sort_keys=True))
        if self.print_verdicts:
            print(verdict_block(summary, self.path), file=sys.stderr if status == "failed" else sys.stdout)


def collect_verdicts(trainer) -> list[Verdict]:
    verdicts = [v for cb in trainer.callbacks for v in getattr(cb, "verdicts", []) if isinstance(v, Verdict)]
    return sorted(verdicts, key=lambda v: (v.step, v.failure))


def final_metrics(trainer) -> dict[str, float]:
    out = {}
    for key, value in trainer.callback_metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    return dict(sorted(out.items()))


def verdict_block(summary: dict[str, Any], path: Path | None = None) -> str:
    """The console block: how the run ended and one line per verdict (or that none showed up)."""
    title = f"Run {summary['status']} at step {summary['steps']}"
    lines = ["", "=" * 72, title]
    if summary.get("error"):
        lines.append(f"error: {summary['error']}")
    if summary["verdicts"]:
        lines.append(f"Failures seen ({DOCS}):")
        for v in summary["verdicts"]:
            lines.append(f"  {Verdict(**v).line()}")
    else:
        lines.append("No failure of F1..F8 detected by the monitors that ran.")
    if path is not None:
        lines.append(f"summary: {path}")
    lines.append("=" * 72)
    return "\n".join(lines)


def _run_dir(trainer) -> str | None:
    if not trainer.loggers:
        return trainer.default_root_dir
    logger = trainer.loggers[0]
    return getattr(logger, "log_dir", None) or logger.save_dir


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".summary-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
