"""Run directories: the one module that reads them (`codec compare`, `codec listen`, sweep results, notebooks).

A fit writes `<run.root>/<run.name>/version_N/` with metrics.csv, config.yaml, summary.json,
checkpoints/ and examples/ (codec/training_cli.py). `load_run` takes a version directory, or
`<run.root>/<run.name>` for its newest *completed* version (summary.json says finished or stopped;
newer failed, interrupted or unfinished versions are skipped and named in `Run.skipped`).

A resumed run (`codec fit ... --ckpt_path runs/x/version_0/checkpoints/last.ckpt`) may sit in a new
version whose config.yaml names the checkpoint it started from; its history is stitched onto the
older version's by step, the resumed values replacing what the older version logged at or after
the step the resumed one starts at (the older run went on past its checkpoint before it died). The
same holds inside one metrics.csv: a step falling back by more than one starts a resumed segment.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from codec.callbacks.verdict import SUMMARY_FILE, read_summary

METRICS_FILE, CONFIG_FILE, EXAMPLES_DIR = "metrics.csv", "config.yaml", "examples"
COMPLETED = ("finished", "stopped")  # summary.json status of a run that ended on its own terms

Rows = list[dict[str, float]]


@dataclass
class Run:
    path: Path                       # the version directory that config and summary come from
    metrics: Rows                    # metrics.csv rows of every stitched version, by step
    config: dict = field(default_factory=dict)
    summary: dict | None = None
    versions: list[Path] = field(default_factory=list)   # stitched, oldest first (the last is `path`)
    skipped: list[str] = field(default_factory=list)     # newer versions passed over, with why

    @property
    def label(self) -> str:
        """`phase_b/version_0`: the run name and the version, as tables and legends show it."""
        return run_label(self.path)

    @property
    def final_step(self) -> int:
        """The step the run ended at: summary.json's (the verdict block's), else the last logged."""
        if self.summary and "steps" in self.summary:
            return int(self.summary["steps"])
        return max((int(r["step"]) for r in self.metrics if "step" in r), default=0)

    def series(self, key: str) -> list[tuple[int, float]]:
        return series(self.metrics, key)

    def value_at(self, key: str, step: int) -> tuple[int, float] | None:
        """The last logged (step, value) of `key` at or before `step`."""
        points = [(s, v) for s, v in self.series(key) if s <= step]
        return points[-1] if points else None

    def config_value(self, dotted: str, default=None):
        """A value of config.yaml by dotted key (`diagnostics.amplitude.threshold`), or `default`."""
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def examples(self) -> dict[int, Path]:
        """Audio example folders (`examples/step_NNNNNN`) by step, over every stitched version."""
        found: dict[int, Path] = {}
        for version in self.versions or [self.path]:
            for folder in sorted((version / EXAMPLES_DIR).glob("step_*")):
                if folder.is_dir() and folder.name[5:].isdigit():
                    found[int(folder.name[5:])] = folder  # a resumed version's own examples win
        return dict(sorted(found.items()))


# ----------------------------------------------------------------------------- finding a run
def load_run(path: str | Path) -> Run:
    """A version directory as given, or the newest completed version under `<root>/<name>`."""
    path = Path(path)
    if is_version_dir(path):
        chosen, skipped = path, []
    else:
        chosen, skipped = newest_completed(path)
    chain = resume_chain(chosen)
    metrics = stitch([read_metrics(v) if (v / METRICS_FILE).is_file() else [] for v in chain])
    if not metrics and not (chosen / METRICS_FILE).is_file():
        raise FileNotFoundError(f"{chosen} has no {METRICS_FILE} (is it a run directory?)")
    return Run(path=chosen, metrics=metrics, config=read_config(chosen), summary=read_summary(chosen),
               versions=chain, skipped=skipped)


def is_version_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in (METRICS_FILE, SUMMARY_FILE, CONFIG_FILE))


def versions(root: str | Path) -> list[Path]:
    """`version_N` folders under a run root, oldest (lowest N) first."""
    found = [p for p in Path(root).glob("version_*") if p.is_dir() and p.name[8:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[8:]))


def status(version_dir: Path) -> str:
    """How a version ended: summary.json's status, or why there is none."""
    summary = read_summary(version_dir)
    if summary is not None:
        return str(summary.get("status", "unknown"))
    if not (version_dir / METRICS_FILE).is_file():
        return "no metrics.csv"
    return "no summary.json (still running, or killed)"


def newest_completed(root: Path) -> tuple[Path, list[str]]:
    """The newest version whose summary says finished or stopped, and a note per newer one skipped.

    With no completed version, the newest one that logged anything, with a note saying so."""
    found = versions(root)
    if not found:
        raise FileNotFoundError(f"no version_* run directory under {root}")
    skipped = []
    for version in reversed(found):
        state = status(version)
        if state in COMPLETED:
            return version, skipped
        error = (read_summary(version) or {}).get("error")
        skipped.append(f"{run_label(version)} skipped: {state}" + (f" ({error})" if error else ""))
    for version in reversed(found):
        if _has_rows(version):
            return version, [*skipped, f"no completed version under {root}; using {run_label(version)}"]
    raise FileNotFoundError(f"no version under {root} logged any metric ({'; '.join(skipped)})")


def resume_chain(version_dir: Path) -> list[Path]:
    """The versions a run's history spans, oldest first: each one's config.yaml `ckpt_path` names a
    checkpoint of the version before it (a fit resumed into a new version)."""
    chain = [version_dir]
    while (previous := resumed_from(chain[0])) is not None and previous not in chain:
        chain.insert(0, previous)
    return chain


def resumed_from(version_dir: Path) -> Path | None:
    """The other version of the same run whose checkpoint this version's fit started from, or None.

    Matched by name (`<run name>/version_K/` in the checkpoint's path), so it holds for run
    directories copied from another machine."""
    ckpt = read_config(version_dir).get("ckpt_path")
    parts = Path(str(ckpt)).parts if ckpt else ()
    for i in range(len(parts) - 1, 0, -1):
        if parts[i].startswith("version_") and parts[i - 1] == version_dir.parent.name:
            previous = version_dir.parent / parts[i]
            return previous if previous.is_dir() and previous.name != version_dir.name else None
    return None


# ----------------------------------------------------------------------------- reading files
def read_metrics(run_dir: str | Path) -> Rows:
    """Rows of one metrics.csv with empty cells dropped and numbers parsed (not stitched)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no {METRICS_FILE} (is it a run directory?)")
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if k and v not in ("", None)} for row in csv.DictReader(f)]


def read_config(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _has_rows(version_dir: Path) -> bool:
    return (version_dir / METRICS_FILE).is_file() and bool(read_metrics(version_dir))


# ----------------------------------------------------------------------------- rows
def stitch(segments: list[Rows]) -> Rows:
    """Rows of consecutive runs of one history (oldest first) as one history by step.

    Each segment, and each place inside one where the step falls back by more than one, starts a
    resumed stretch: rows logged before it at or after its first step are dropped (they belong to
    the timeline the resume discarded), so the resumed values win. (Inside one run the step can
    fall back by one: training rows carry the step count after the update, validation and monitor
    rows the index of the step, codec/callbacks/log_now.py.)"""
    stitched: Rows = []
    for segment in segments:
        for part in _split_at_resumes(segment):
            first = min(_step(r) for r in part)
            stitched = [r for r in stitched if _step(r) < first] + part
    return stitched


def _split_at_resumes(rows: Rows) -> list[Rows]:
    parts: list[Rows] = []
    highest = -1.0
    for row in rows:
        if not parts or _step(row) < highest - 1:
            parts.append([])
            highest = -1.0
        parts[-1].append(row)
        highest = max(highest, _step(row))
    return parts


def _step(row: dict) -> float:
    return row.get("step", -1.0)


def series(rows: Rows, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of `key` in logging order."""
    return [(int(row.get("step", i)), row[key]) for i, row in enumerate(rows) if key in row]


def last_value(rows: Rows, key: str) -> float | None:
    """The last logged value of `key`, or None."""
    for row in reversed(rows):
        if key in row:
            return row[key]
    return None


def level_count(rows: Rows) -> int:
    """How many quantizer levels logged a validation perplexity (val/rvq/q{i}/perplexity)."""
    keys = set().union(*rows) if rows else set()
    n = 0
    while f"val/rvq/q{n}/perplexity" in keys:
        n += 1
    return n


def run_label(run_dir: str | Path) -> str:
    run_dir = Path(run_dir)
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.startswith("version_") else run_dir.name
