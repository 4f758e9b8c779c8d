"""`codec compare RUN_DIR...`: the reports' phase comparison, generated from run directories.

    codec compare runs/phase_1 runs/phase_b                 # runs/<name> means its latest version
    codec compare runs/phase_1 runs/phase_a --steps 2500,3000 --out runs/compare/a_vs_1

Writes `compare.md` (a table of RMS ratio, out_proj norm and per-level perplexity at the chosen
steps, like the reports' "@ 2.5K" tables, the verdicts of each run and the config keys that differ)
and one PNG of curves over steps per key metric, one line per run. Reads only metrics.csv,
config.yaml and summary.json, so it works offline and on runs copied from other machines.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from codec.report import latest_version, level_count, read_metrics, run_label, series

# (column, metric): the reports' comparison columns; perplexity columns are added per level.
TABLE_METRICS = [("RMS ratio", "val/audio/rms_ratio"), ("out_proj norm", "train/params/out_proj/weight_norm"),
                 ("SNR dB", "val/audio/snr_db")]
CURVES = ["val/audio/rms_ratio", "val/audio/snr_db", "val/audio/si_sdr_db", "val/audio/mel_l1",
          "train/params/out_proj/weight_norm", "val/rvq/q0/perplexity", "train/loss/total"]
IGNORED_CONFIG = ("run.", "trainer.logger", "trainer.callbacks", "seed_everything")


def resolve(run: str | Path) -> Path:
    """A version directory as given, or the latest version under runs/<name>/."""
    run = Path(run)
    return run if (run / "metrics.csv").is_file() else latest_version(run)


def value_at(rows: list[dict[str, float]], key: str, step: int) -> tuple[int, float] | None:
    """The last logged (step, value) of `key` at or before `step`."""
    points = [(s, v) for s, v in series(rows, key) if s <= step]
    return points[-1] if points else None


def _step_label(step: int) -> str:
    return f"{step / 1000:g}K" if step >= 1000 else str(step)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def comparison(run_dirs: list[Path], steps: list[int] | None = None,
               metrics_of: dict[Path, list[dict[str, float]]] | None = None) -> tuple[str, list[dict]]:
    """(markdown, rows): one row per run and step. Default step: the last step every run validated.
    `metrics_of` holds metrics.csv rows already read, per run directory."""
    from codec.callbacks.verdict import read_summary, verdict_tags

    metrics_of = metrics_of or {d: read_metrics(d) for d in run_dirs}
    runs = [(run_label(d), metrics_of[d], d) for d in run_dirs]
    if not steps:
        last = [max((s for s, _ in series(rows, "val/audio/rms_ratio")), default=0) for _, rows, _ in runs]
        steps = [min(last)] if last else [0]
    n_levels = max(level_count(rows) for _, rows, _ in runs)
    metrics = TABLE_METRICS + [(f"ppl q{i}", f"val/rvq/q{i}/perplexity") for i in range(n_levels)]
    header = ["run", "step", *(name for name, _ in metrics), "verdicts"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = []
    for label, rows, run_dir in runs:
        verdicts = verdict_tags(read_summary(run_dir)) or "-"
        for step in steps:
            record = {"run": label, "step": step, "verdicts": verdicts}
            for name, key in metrics:
                found = value_at(rows, key, step)
                record[name] = found[1] if found else None
            table.append(record)
            cells = [label, f"@ {_step_label(step)}", *(_fmt(record[name]) for name, _ in metrics), verdicts]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), table


def config_differences(run_dirs: list[Path]) -> dict[str, list]:
    """Flattened config.yaml keys whose values differ between runs (run names and loggers left out)."""
    flats = []
    for d in run_dirs:
        path = d / "config.yaml"
        flats.append(_flatten(yaml.safe_load(path.read_text())) if path.is_file() else {})
    keys = sorted(set().union(*flats))
    return {k: [f.get(k) for f in flats] for k in keys
            if not k.startswith(IGNORED_CONFIG) and len({repr(f.get(k)) for f in flats}) > 1}


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def plot_curves(run_dirs: list[Path], out_dir: Path, metrics: list[str] = CURVES,
                metrics_of: dict[Path, list[dict[str, float]]] | None = None) -> list[Path]:
    """One PNG per metric that any run logged: the metric over steps, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics_of = metrics_of or {d: read_metrics(d) for d in run_dirs}
    runs = [(run_label(d), metrics_of[d]) for d in run_dirs]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in metrics:
        lines = [(label, series(rows, key)) for label, rows in runs]
        if not any(points for _, points in lines):
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, points in lines:
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], marker="." if len(points) < 30 else None,
                        label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.legend()
        fig.tight_layout()
        path = out_dir / (re.sub(r"[^\w.-]", "_", key) + ".png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def write(run_dirs: list[Path], out_dir: Path, steps: list[int] | None = None) -> Path:
    """compare.md and the curve PNGs under out_dir; returns compare.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_of = {d: read_metrics(d) for d in run_dirs}  # read once for the table and the curves
    table, _ = comparison(run_dirs, steps, metrics_of)
    text = ["# Run comparison", "", "Values are the last logged at or before each step.", "", table]
    differences = config_differences(run_dirs)
    if differences:
        names = [run_label(d) for d in run_dirs]
        text += ["", "Config keys that differ:", "", "| key | " + " | ".join(names) + " |",
                 "|---|" + "---|" * len(names)]
        text += [f"| {k} | " + " | ".join(str(v) for v in values) + " |" for k, values in differences.items()]
    plots = plot_curves(run_dirs, out_dir, metrics_of=metrics_of)
    text += ["", "Curves: " + ", ".join(p.name for p in plots)]
    path = out_dir / "compare.md"
    path.write_text("\n".join(text) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "compare":
        args = args[1:]
    p = argparse.ArgumentParser(prog="codec compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (version_N) or runs/<name> (its latest version)")
    p.add_argument("--steps", help="comma-separated steps, e.g. 2500,5000 (default: the last common one)")
    p.add_argument("--out", default="runs/compare", help="output folder (default: runs/compare)")
    opts = p.parse_args(args)
    try:
        run_dirs = [resolve(r) for r in opts.runs]
        steps = [int(s) for s in opts.steps.split(",")] if opts.steps else None
    except (FileNotFoundError, ValueError) as e:
        print(f"codec compare: {e}", file=sys.stderr)
        return 2
    path = write(run_dirs, Path(opts.out), steps)
    print(path.read_text())
    print(f"written: {path.parent}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
