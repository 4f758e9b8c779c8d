"""Read run directories (metrics.csv + config.yaml) and print the reports' side-by-side comparison.

Works offline and on runs copied from other machines: it reads only files.

    python -m codec.report runs/phase_1/version_0 runs/phase_b/version_0
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

from codec.callbacks.verdict import read_summary, verdict_tags

SUMMARY_METRICS = [
    ("val/audio/snr_db", "SNR dB"),
    ("val/audio/si_sdr_db", "SI-SDR dB"),
    ("val/audio/mel_l1", "mel L1"),
    ("val/audio/rms_ratio", "RMS ratio"),
]


def read_metrics(run_dir: str | Path) -> list[dict[str, float]]:
    """Rows of metrics.csv with empty cells dropped and numbers parsed."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no metrics.csv (is it a run directory?)")
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def last_value(rows: list[dict[str, float]], key: str) -> float | None:
    """The last logged value of `key`, or None."""
    for row in reversed(rows):
        if key in row:
            return row[key]
    return None


def series(rows: list[dict[str, float]], key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of `key` in logging order."""
    return [(int(row.get("step", i)), row[key]) for i, row in enumerate(rows) if key in row]


def run_label(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.startswith("version_") else run_dir.name


def summary_table(run_dirs: list[str | Path]) -> str:
    """Markdown table: final validation metrics and per-level perplexity, one column per run."""
    runs = [(run_label(Path(d)), read_metrics(d)) for d in run_dirs]
    levels = max(level_count(rows) for _, rows in runs)
    lines = ["| metric | " + " | ".join(name for name, _ in runs) + " |",
             "|---|" + "---|" * len(runs)]
    rows_out = [(label, key) for key, label in SUMMARY_METRICS]
    rows_out += [(f"val perplexity q{i}", f"val/rvq/q{i}/perplexity") for i in range(levels)]
    rows_out.append(("steps", "step"))
    for label, key in rows_out:
        cells = [_fmt(last_value(rows, key)) for _, rows in runs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| verdicts | " + " | ".join(_verdicts(Path(d)) for d in run_dirs) + " |")
    return "\n".join(lines)


def _verdicts(run_dir: Path) -> str:
    """The monitors' verdicts from summary.json, e.g. "F3@1500", "none", or "-" without a summary."""
    summary = read_summary(run_dir)
    return "-" if summary is None else verdict_tags(summary, ", ") or "none"


def level_count(rows: list[dict[str, float]]) -> int:
    """How many quantizer levels logged a validation perplexity (val/rvq/q{i}/perplexity)."""
    n = 0
    while any(f"val/rvq/q{n}/perplexity" in r for r in rows):
        n += 1
    return n


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3f}"


def latest_version(run_root: str | Path) -> Path:
    """The newest version_N under runs/<name>/."""
    versions = sorted(Path(run_root).glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise FileNotFoundError(f"no version_* run directory under {run_root}")
    return versions[-1]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m codec.report RUN_DIR [RUN_DIR ...]  (runs/<name> picks its latest version)")
        return 2
    dirs = [Path(a) if Path(a, "metrics.csv").is_file() else latest_version(a) for a in args]
    print(summary_table(dirs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
