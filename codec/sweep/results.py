"""The sweep's results: one row per trial (parameters, objective, audio metrics, perplexity, verdicts),
best first, as markdown and CSV; Optuna's parameter importances; a PNG of the objective per arm.

Trial metrics come from each trial's run directory (metrics.csv, summary.json), so the table shows
what the runs logged, not only what the study stored.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import optuna
from optuna.trial import TrialState

from codec.report import last_value, level_count, read_metrics
from codec.sweep.config import Sweep

STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
METRICS = [("snr_db", "val/audio/snr_db"), ("si_sdr_db", "val/audio/si_sdr_db"),
           ("rms_ratio", "val/audio/rms_ratio")]
MIN_TRIALS_FOR_IMPORTANCE = 4


def trial_rows(study: optuna.Study, sweep: Sweep) -> list[dict]:
    """One dict per trial, best first: complete by objective, then pruned, failed, unfinished."""
    rows = [_row(t, sweep) for t in study.get_trials(deepcopy=False)]
    sign = -1 if sweep.direction == "maximize" else 1
    order = list(STATES.values())

    def key(row):
        value = row["objective"]
        return (order.index(row["state"]), value is None, sign * value if value is not None else 0, row["trial"])

    return sorted(rows, key=key)


def _row(trial: optuna.trial.FrozenTrial, sweep: Sweep) -> dict:
    from codec.callbacks.verdict import read_summary, verdict_tags

    row = {"trial": trial.number, "state": STATES.get(trial.state, trial.state.name.lower())}
    row.update({key: trial.params.get(key) for key in sweep.space})
    row["objective"] = trial.value if trial.value is not None and math.isfinite(trial.value) else None
    run_dir = trial.user_attrs.get("run_dir")
    metrics = []
    if run_dir and Path(run_dir, "metrics.csv").is_file():
        metrics = read_metrics(run_dir)
    for name, key in METRICS:
        row[name] = last_value(metrics, key)
    for level in range(level_count(metrics)):
        row[f"q{level}_perplexity"] = last_value(metrics, f"val/rvq/q{level}/perplexity")
    summary = (read_summary(run_dir) if run_dir else None) or {}
    pruned = trial.user_attrs.get("pruned", "")
    row["collapsed"] = bool(summary.get("collapsed")) or "collapse" in pruned
    row["verdicts"] = verdict_tags(summary)
    row["note"] = trial.user_attrs.get("error") or pruned
    row["run_dir"] = run_dir or ""
    return row


def _columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    # Perplexity columns after the audio metrics, whatever the order rows introduced them in.
    fixed = [c for c in columns if not c.endswith("_perplexity") and c not in ("collapsed", "verdicts", "note", "run_dir")]
    levels = sorted((c for c in columns if c.endswith("_perplexity")), key=lambda c: int(c[1:].split("_")[0]))
    return fixed + levels + ["collapsed", "verdicts", "note", "run_dir"]


def _cell(value, width: int | None = None) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value).replace("|", "/").replace("\n", " ")
    return text if width is None or len(text) <= width else text[: width - 3] + "..."


def markdown_table(rows: list[dict], sweep: Sweep) -> str:
    columns = [c for c in _columns(rows) if c != "run_dir"]
    headers = [sweep.space[c].short if c in sweep.space else c for c in columns]
    headers = [f"objective ({sweep.metric}, {sweep.direction})" if h == "objective" else h for h in headers]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        note = (row.get("note") or "").split("\n")[0]  # the root cause; the CSV keeps all of it
        lines.append("| " + " | ".join(_cell(note if c == "note" else row.get(c), 160 if c == "note" else None)
                                       for c in columns) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    columns = _columns(rows)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})


def importances(study: optuna.Study, sweep: Sweep) -> dict[str, float] | None:
    """Optuna's fANOVA importances, when at least 4 trials completed and more than one key varies."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(sweep.space) < 2 or len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    try:
        return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):  # e.g. every completed trial has the same value
        return None


def plot_objective(rows: list[dict], sweep: Sweep, out_dir: Path) -> list[Path]:
    """One PNG per varied key: the objective of each trial against its value, pruned trials hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, param in sweep.space.items():
        points = [(r[key], r["objective"], r["state"]) for r in rows
                  if r["objective"] is not None and r.get(key) is not None]
        categorical = param.grid is not None and not all(isinstance(v, (int, float)) for v in param.grid)
        labels = [str(v) for v in param.grid] if categorical else []
        fig, ax = plt.subplots(figsize=(6, 4))
        for state, marker in (("complete", "o"), ("pruned", "x")):
            xs = [labels.index(str(x)) if categorical else x for x, _, s in points if s == state]
            ys = [y for _, y, s in points if s == state]
            if xs:
                ax.scatter(xs, ys, marker=marker, label=state)
        if categorical:
            ax.set_xticks(range(len(labels)), labels, rotation=20)
        elif getattr(param.distribution, "log", False):
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(sweep.metric)
        ax.set_title(f"{sweep.name}: {sweep.metric} per {param.short}")
        if points:
            ax.legend()
        fig.tight_layout()
        safe = re.sub(r"[^\w.-]", "_", param.short)
        path = out_dir / f"objective_by_{safe}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(study: optuna.Study, sweep: Sweep) -> Path:
    """results.md, results.csv and objective_by_*.png under the sweep directory; returns results.md."""
    out_dir = sweep.dir
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study, sweep)
    counts = {s: sum(r["state"] == s for r in rows) for s in STATES.values()}
    text = [f"# Sweep {sweep.name}", "",
            f"{len(rows)} trials ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}); "
            f"{sweep.steps} steps each; base {sweep.base.name}; storage {sweep.storage_url}", "",
            markdown_table(rows, sweep)]
    ranked = importances(study, sweep)
    if ranked:
        text += ["", "Parameter importances (fANOVA): " +
                 ", ".join(f"{sweep.space[k].short} {v:.2f}" for k, v in ranked.items())]
    write_csv(rows, out_dir / "results.csv")
    plots = plot_objective(rows, sweep, out_dir)
    text += ["", "Plots: " + ", ".join(p.name for p in plots)]
    path = out_dir / "results.md"
    path.write_text("\n".join(text) + "\n")
    return path
