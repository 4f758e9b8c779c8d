"""`codec compare RUN_DIR...`: the reports' phase comparison, generated from run directories.

    codec compare runs/phase_1 runs/phase_b                 # runs/<name>: its newest completed version
    codec compare runs/phase_1 runs/phase_a --steps 2500,3000 --out runs/compare/a_vs_1

Writes `compare.md` (per run and step: RMS ratio, out_proj norm, SNR, SI-SDR, mel distance and
per-level perplexity, like the reports' "@ 2.5K" tables, the step each run ended at and its
verdicts; then the config keys that differ), one PNG of curves per key metric (one line per run,
reference lines where a value means something), and `listen.html` when the runs saved audio
examples (`codec listen`). Reads only run directories (codec/runs.py), so it works offline and on
runs copied from other machines. Versions skipped (a newer failed run) are named.

Each step is a small function (`phase_table`, `config_differences`, `plot_curves`, `write`) so
that other tools and notebooks can compose them.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from codec.plots import axis_label, matplotlib_pyplot, plain_log_axis, unit_of
from codec.runs import Run, level_count, load_run

# (column, metric): the reports' comparison columns; perplexity columns are added per level.
TABLE_METRICS = [("RMS ratio", "val/audio/rms_ratio"), ("out_proj norm", "train/params/out_proj/weight_norm"),
                 ("SNR dB", "val/audio/snr_db"), ("SI-SDR dB", "val/audio/si_sdr_db"), ("mel L1", "val/audio/mel_l1")]
# Curves drawn when any run logged them (the newer audio metrics appear once runs log them).
CURVES = ["val/audio/rms_ratio", "val/audio/rms_ratio_no_dc", "val/audio/snr_db", "val/audio/si_sdr_db",
          "val/audio/mel_l1", "val/audio/correlation", "val/audio/dc_offset", "val/audio/dc_fraction",
          "val/audio/loudness_diff_lu",
          "val/rvq/bitrate_used_kbps", "train/params/out_proj/weight_norm", "val/rvq/q0/perplexity",
          "train/loss/total"]
IGNORED_CONFIG = ("run.", "trainer.logger", "trainer.callbacks", "seed_everything", "ckpt_path")
DEFAULT_COLLAPSE_BOUND = 0.1  # diagnostics.amplitude.threshold's default, for runs whose config lacks it


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Each path as a Run (a version directory, or runs/<name> for its newest completed version)."""
    return [load_run(p) for p in paths]


def skipped_notes(runs: list[Run]) -> list[str]:
    return [note for run in runs for note in run.skipped]


# ----------------------------------------------------------------------------- the table
def phase_table(runs: list[Run], steps: list[int] | None = None) -> tuple[str, list[dict]]:
    """(markdown, rows): one row per run and step, each value the last logged at or before the step.
    Default step: the last step every run validated."""
    if not steps:
        last = [max((s for s, _ in run.series("val/audio/rms_ratio")), default=0) for run in runs]
        steps = [min(last)] if last else [0]
    n_levels = max((level_count(run.metrics) for run in runs), default=0)
    metrics = TABLE_METRICS + [(f"ppl q{i}", f"val/rvq/q{i}/perplexity") for i in range(n_levels)]
    header = ["run", "step", *(name for name, _ in metrics), "ended at", "verdicts"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table = []
    for run in runs:
        verdicts = verdict_text(run)
        for step in steps:
            record = {"run": run.label, "step": step, "ended at": run.final_step, "verdicts": verdicts}
            for name, key in metrics:
                found = run.value_at(key, step)
                record[name] = found[1] if found else None
            table.append(record)
            cells = [run.label, f"@ {_step_label(step)}", *(_fmt(record[name]) for name, _ in metrics),
                     str(run.final_step), verdicts]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), table


def verdict_text(run: Run) -> str:
    """The monitors' verdicts from summary.json ("F3@1500 F4@1500"), then those the rules reach now
    on the run's metrics.csv but the run did not raise (older runs, monitors switched off), marked
    with "*"; "none", or "-" without a summary and nothing replayed."""
    from codec.diagnostics.verdict import verdict_tags

    live = verdict_tags(run.summary) if run.summary is not None else ""
    extra = replayed_only(run)
    text = " ".join(filter(None, [live, " ".join(f"{v.failure}@{v.step}*" for v in extra)]))
    return text or ("none" if run.summary is not None else "-")


def replayed_only(run: Run) -> list:
    """Verdicts `codec.diagnostics.replay` reaches on the run's metrics.csv that its summary lacks."""
    from codec.diagnostics.replay import replay

    raised = {(v.get("failure"), v.get("rule"), v.get("subject")) for v in (run.summary or {}).get("verdicts") or []}
    return [v for v in replay(run.metrics, run.config) if v.key not in raised]


def _step_label(step: int) -> str:
    return f"{step / 1000:g}K" if step >= 1000 else str(step)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


# ----------------------------------------------------------------------------- config
def config_differences(runs: list[Run]) -> dict[str, list]:
    """Flattened config.yaml keys whose values differ between runs (run names and loggers left out)."""
    flats = [_flatten(run.config) for run in runs]
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


# ----------------------------------------------------------------------------- curves
def plot_curves(runs: list[Run], out_dir: Path, metrics: list[str] = CURVES) -> list[Path]:
    """One PNG per metric that any run logged: the metric over training steps, one line per run.

    Validation values are drawn as marked points (one per validation); RMS ratios get reference
    lines at 1.0 and at each run's collapse bound (its `diagnostics.amplitude.threshold`, and
    explosion bound `diagnostics.amplitude.high` when set), on a log axis; perplexity gets each
    run's codebook size, the most it can reach."""
    plt = matplotlib_pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in metrics:
        lines = [(run, run.series(key)) for run in runs]
        if not any(points for _, points in lines):
            continue
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        validation = key.startswith("val/")
        for run, points in lines:
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], marker="o" if validation else None,
                        markersize=4, label=run.label)
        _reference_lines(ax, key, runs)
        if ax.get_yscale() == "log":
            plain_log_axis(ax)  # after the reference lines have set the range
        ax.set_xlabel("training step")
        ax.set_ylabel(axis_label(key))
        ax.set_title(f"{key}" + ("  (markers: validations)" if validation else ""), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / (re.sub(r"[^\w.-]", "_", key) + ".png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _reference_lines(ax, key: str, runs: list[Run]) -> None:
    if unit_of(key) == "ratio":
        values = [v for run in runs for _, v in run.series(key)]
        if values and min(values) > 0:
            ax.set_yscale("log")  # collapse (0.02) and explosion (1e3) are equally far from 1
        ax.axhline(1.0, color="green", linestyle="--", linewidth=1, label="1.0: same level as the input")
        bounds = {run.config_value("diagnostics.amplitude.threshold", DEFAULT_COLLAPSE_BOUND) for run in runs}
        for bound in sorted(b for b in bounds if b is not None):
            ax.axhline(bound, color="red", linestyle=":", linewidth=1, label=f"{bound:g}: collapse bound")
        for high in sorted({h for run in runs if (h := run.config_value("diagnostics.amplitude.high")) is not None}):
            ax.axhline(high, color="darkorange", linestyle=":", linewidth=1, label=f"{high:g}: explosion bound")
    elif re.fullmatch(r"(val|train)/rvq/q\d+/(perplexity|codes_used)", key):
        ax.set_yscale("log")  # 1 (collapse) to the codebook size, both readable
        sizes = {run.config_value("model.quantizer.codebook_size") for run in runs}
        for size in sorted(s for s in sizes if s is not None):
            ax.axhline(size, color="gray", linestyle="--", linewidth=1, label=f"codebook size {size}")


# ----------------------------------------------------------------------------- all of it
def write(runs: list[Run], out_dir: Path, steps: list[int] | None = None) -> Path:
    """compare.md, the curve PNGs and (when the runs saved audio examples) listen.html under out_dir."""
    from codec.listen import write_listening_report

    out_dir.mkdir(parents=True, exist_ok=True)
    table, _ = phase_table(runs, steps)
    text = ["# Run comparison", "", "Values are the last logged at or before each step; "
            "\"ended at\" is the step each run stopped at (its verdict block's). Verdicts are the run's own "
            "(summary.json); those marked * are what the diagnostics rules find on its metrics.csv now "
            "(docs/failure-modes.md).", ""]
    text += [f"- {note}" for note in skipped_notes(runs)] + ([""] if skipped_notes(runs) else [])
    text.append(table)
    replayed = [(run, v) for run in runs for v in replayed_only(run)]
    if replayed:
        text += ["", "Found by the rules now (*):", ""] + [f"- {run.label}: {v.line()}" for run, v in replayed]
    differences = config_differences(runs)
    if differences:
        names = [run.label for run in runs]
        text += ["", "Config keys that differ:", "", "| key | " + " | ".join(names) + " |",
                 "|---|" + "---|" * len(names)]
        text += [f"| {k} | " + " | ".join(str(v) for v in values) + " |" for k, values in differences.items()]
    plots = plot_curves(runs, out_dir)
    text += ["", "Curves: " + ", ".join(p.name for p in plots)]
    if any(run.examples() for run in runs):
        text += ["", f"Listening: {write_listening_report(runs, out_dir / 'listen.html').name}"]
    path = out_dir / "compare.md"
    path.write_text("\n".join(text) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "compare":
        args = args[1:]
    p = argparse.ArgumentParser(prog="codec compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (version_N) or runs/<name> (its newest completed version)")
    p.add_argument("--steps", help="comma-separated steps, e.g. 2500,5000 (default: the last common one)")
    p.add_argument("--out", default="runs/compare", help="output folder (default: runs/compare)")
    opts = p.parse_args(args)
    try:
        steps = [int(s) for s in opts.steps.split(",")] if opts.steps else None
        runs = load_runs(opts.runs)
    except (FileNotFoundError, ValueError) as e:
        print(f"codec compare: {e}", file=sys.stderr)
        return 2
    for note in skipped_notes(runs):
        print(f"codec compare: {note}", file=sys.stderr)
    path = write(runs, Path(opts.out), steps)
    print(path.read_text())
    print(f"written: {path.parent}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
