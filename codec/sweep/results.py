"""The sweep's results: one row per arm (mean of its seeds and a 95 % interval, every grid arm
shown, "not run" included), a note on whether the best arm is ahead of the second beyond noise, one
row per trial, Optuna's parameter importances, and plots of the objective per arm with error bars.

Trial metrics come from each trial's run directory (codec/runs.py), so the tables show what the
runs logged, not only what the study stored; where the run directory is not on this machine (a
sweep spread over machines), from the same figures the trial stored in the study when it ended.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from codec.plots import axis_label, matplotlib_pyplot, y_limits
from codec.sweep import arms
from codec.sweep.config import Sweep
from codec.sweep.space import arm_label
from codec.sweep.storage import display_url

STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
ORDER = ["complete", "pruned", "failed", "running", "waiting", "interrupted"]
METRICS = [("snr_db", "val/audio/snr_db"), ("si_sdr_db", "val/audio/si_sdr_db"),
           ("rms_ratio", "val/audio/rms_ratio")]
TAIL = ["collapsed", "verdicts", "note", "host", "run_dir"]
FIGURES = "figures"  # user attribute: run_figures() of the trial's run directory when it ended
MIN_TRIALS_FOR_IMPORTANCE = 4
# Student's t, 97.5 % quantile, by degrees of freedom (two-sided 95 % interval of a mean of n = df + 1
# seeds); beyond 30 the normal 1.96 is within 2 %. A table, not scipy, for these thirty numbers.
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def interval(values: list[float]) -> tuple[float, float] | None:
    """The 95 % confidence interval of the mean (Student's t); None below two values."""
    if len(values) < 2:
        return None
    mean, half = statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
    half *= T_975[len(values) - 2] if len(values) - 2 < len(T_975) else 1.96
    return mean - half, mean + half


# ----------------------------------------------------------------------------- trials
def trial_rows(study: optuna.Study, sweep: Sweep) -> list[dict]:
    """One dict per trial (skipped ones left out), best first: complete by objective, then pruned,
    failed, unfinished, interrupted."""
    rows = [_row(t, sweep) for t in study.get_trials(deepcopy=False) if not arms.is_skipped(t)]
    sign = -1 if sweep.direction == "maximize" else 1

    def key(row):
        value = row["objective"]
        return (ORDER.index(row["state"]), value is None, sign * value if value is not None else 0, row["trial"])

    return sorted(rows, key=key)


def run_figures(run_dir: str | Path) -> dict:
    """What the tables show of one run directory: the last validation's audio metrics, per-level
    perplexity, whether it collapsed and its verdicts ({} without metrics.csv)."""
    from codec.callbacks.verdict import verdict_tags
    from codec.runs import last_value, level_count, load_run

    if not Path(run_dir, "metrics.csv").is_file():
        return {}
    run = load_run(run_dir)
    figures = {name: last_value(run.metrics, key) for name, key in METRICS}
    for level in range(level_count(run.metrics)):
        figures[f"q{level}_perplexity"] = last_value(run.metrics, f"val/rvq/q{level}/perplexity")
    summary = run.summary or {}
    return {**figures, "collapsed": bool(summary.get("collapsed")), "verdicts": verdict_tags(summary)}


def _row(trial: optuna.trial.FrozenTrial, sweep: Sweep) -> dict:
    state = "interrupted" if arms.is_interrupted(trial) else STATES.get(trial.state, trial.state.name.lower())
    row = {"trial": trial.number, "state": state}
    params = arms.params_of(trial) or {}
    row.update({key: params.get(key) for key in sweep.space})
    row["seed"] = arms.seed_of(trial)
    row["objective"] = trial.value if trial.value is not None and math.isfinite(trial.value) else None
    run_dir = trial.user_attrs.get("run_dir")
    figures = (run_figures(run_dir) if run_dir else {}) or trial.user_attrs.get(FIGURES) or {}
    row.update({name: figures.get(name) for name, _ in METRICS})
    row.update({k: v for k, v in figures.items() if k.endswith("_perplexity")})
    pruned = trial.user_attrs.get("pruned", "")
    row["collapsed"] = bool(figures.get("collapsed")) or "collapse" in pruned
    row["verdicts"] = figures.get("verdicts", "")
    retry = trial.user_attrs.get(arms.RETRY_OF)
    row["note"] = trial.user_attrs.get("error") or pruned or (f"re-run of interrupted trial {retry}" if retry is not None else "")
    row["host"] = (trial.user_attrs.get(arms.WORKER) or {}).get("host", "")
    row["run_dir"] = run_dir or ""
    return row


# ----------------------------------------------------------------------------- arms
@dataclass
class Arm:
    params: dict
    label: str
    rows: list[dict] = field(default_factory=list)  # its trials' rows

    @property
    def values(self) -> list[float]:
        """Objectives of its complete seeds."""
        return [r["objective"] for r in self.rows if r["state"] == "complete" and r["objective"] is not None]

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return interval(self.values)

    def mean_of(self, name: str) -> float | None:
        found = [r[name] for r in self.rows if r["state"] == "complete" and r.get(name) is not None]
        return statistics.fmean(found) if found else None

    def states(self, seeds: int) -> str:
        counted = [r for r in self.rows if r["state"] != "interrupted"]
        if not counted:
            return "not run"
        parts = [f"{sum(r['state'] == s for r in counted)} {s}" for s in ORDER if any(r["state"] == s for r in counted)]
        missing = seeds - len({r["seed"] for r in counted})
        return ", ".join(parts + ([f"{missing} not run"] if missing > 0 else []))

    def verdicts(self) -> str:
        """Each failure seen and in how many of its seeds ("F3 in 1/3")."""
        runs = [r for r in self.rows if r["state"] != "interrupted"]
        codes = sorted({tag.split("@")[0] for r in runs for tag in (r["verdicts"] or "").split()})
        return ", ".join(f"{c} in {sum(c in (r['verdicts'] or '') for r in runs)}/{len(runs)}" for c in codes)


def arm_table(rows: list[dict], sweep: Sweep, study: optuna.Study) -> list[Arm]:
    """Every arm, best mean first: a grid's every point (those without trials say "not run"), or
    the arms a sampler proposed."""
    trials = study.get_trials(deepcopy=False)
    listed = arms.grid_arms(sweep) if arms.is_grid(sweep) else []
    listed += [p for p in arms.known_arms(trials).values() if p not in listed]
    table = {arms.arm_key(p): Arm(p, arm_label(p, sweep.space)) for p in listed}
    for row in rows:
        params = {key: row[key] for key in sweep.space}
        if arms.arm_key(params) in table:
            table[arms.arm_key(params)].rows.append(row)
    sign = -1 if sweep.direction == "maximize" else 1
    order = list(table)
    return sorted(table.values(), key=lambda a: (a.mean is None, sign * (a.mean or 0), order.index(arms.arm_key(a.params))))


def noise_note(ranked: list[Arm], sweep: Sweep) -> str:
    """Whether the best arm is ahead of the second beyond their 95 % intervals."""
    scored = [a for a in ranked if a.mean is not None]
    if len(scored) < 2:
        return ""
    best, second = scored[:2]
    if best.interval is None or second.interval is None:
        return (f"Cannot tell {best.label} ({best.mean:.4g}) from {second.label} ({second.mean:.4g}): fewer than "
                "two complete seeds per arm, so seed-to-seed noise is unknown; run with --seeds 3 or more.")
    (b_low, b_high), (s_low, s_high) = best.interval, second.interval
    described = f"{best.label} {_mean_ci(best)} and {second.label} {_mean_ci(second)}"
    if b_low <= s_high and s_low <= b_high:
        return (f"Within noise: the 95% intervals of the best two arms overlap ({described}); more seeds or "
                "steps are needed to tell them apart.")
    return f"The best arm is ahead beyond noise: {described} do not overlap."


def _mean_ci(arm: Arm) -> str:
    low, high = arm.interval
    return f"{arm.mean:.4g} [{low:.4g}, {high:.4g}]"


# ----------------------------------------------------------------------------- tables
def _columns(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    # Perplexity columns after the audio metrics, whatever the order rows introduced them in.
    fixed = [c for c in columns if not c.endswith("_perplexity") and c not in TAIL]
    levels = sorted((c for c in columns if c.endswith("_perplexity")), key=lambda c: int(c[1:].split("_")[0]))
    return fixed + levels + TAIL


def _cell(value, width: int | None = None) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value).replace("|", "/").replace("\n", " ")
    return text if width is None or len(text) <= width else text[: width - 3] + "..."


def _markdown(headers: list[str], lines: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] +
                     ["| " + " | ".join(cells) + " |" for cells in lines])


def markdown_table(rows: list[dict], sweep: Sweep) -> str:
    columns = [c for c in _columns(rows) if c not in ("host", "run_dir")]
    headers = [sweep.space[c].short if c in sweep.space else c for c in columns]
    headers = [f"objective ({sweep.metric}, {sweep.direction})" if h == "objective" else h for h in headers]
    lines = []
    for row in rows:
        note = (row.get("note") or "").split("\n")[0]  # the root cause; the CSV keeps all of it
        lines.append([_cell(note if c == "note" else row.get(c), 160 if c == "note" else None) for c in columns])
    return _markdown(headers, lines)


def arm_markdown(ranked: list[Arm], sweep: Sweep) -> str:
    headers = [p.short for p in sweep.space.values()] + [
        f"{sweep.metric} mean", "95% interval", "seeds", "SNR dB", "RMS ratio", "verdicts"]
    lines = []
    for arm in ranked:
        low_high = arm.interval
        lines.append([_cell(arm.params.get(k)) for k in sweep.space] + [
            _cell(arm.mean), f"[{low_high[0]:.4g}, {low_high[1]:.4g}]" if low_high else "-",
            arm.states(sweep.seeds), _cell(arm.mean_of("snr_db")), _cell(arm.mean_of("rms_ratio")),
            arm.verdicts() or "-"])
    return _markdown(headers, lines)


def write_csv(rows: list[dict], path: Path, columns: list[str] | None = None) -> None:
    columns = columns or _columns(rows)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    write_atomically(path, text.getvalue())


def write_atomically(path: Path, text: str) -> None:
    """Replace the file in one step: commands of one sweep that end together on one machine each
    write the results, and a reader never sees half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", newline="") as f:
        f.write(text)
    os.replace(temporary, path)


def arm_csv_rows(ranked: list[Arm], sweep: Sweep) -> list[dict]:
    out = []
    for arm in ranked:
        low_high = arm.interval or (None, None)
        out.append({"arm": arm.label, **arm.params, "mean": arm.mean, "ci_low": low_high[0], "ci_high": low_high[1],
                    "complete_seeds": len(arm.values), "seeds": arm.states(sweep.seeds),
                    "snr_db": arm.mean_of("snr_db"), "rms_ratio": arm.mean_of("rms_ratio"), "verdicts": arm.verdicts()})
    return out


def importances(study: optuna.Study, sweep: Sweep) -> dict[str, float] | None:
    """Optuna's fANOVA importances, when at least 4 trials completed and more than one key varies."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(sweep.space) < 2 or len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    try:
        return optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):  # e.g. every completed trial has the same value
        return None


# ----------------------------------------------------------------------------- plots
def plot_objective(ranked: list[Arm], sweep: Sweep, out_dir: Path) -> list[Path]:
    """`objective_by_<key>.png` per varied key (and `objective_by_arm.png` when several vary): each
    arm's mean with its 95 % interval as an error bar, each complete seed as a dot, on a y range
    that spans at least a few dB (codec.plots.y_limits), so seed noise does not look like a cliff."""
    plans = [(param.short, key, param) for key, param in sweep.space.items()]
    if len(sweep.space) > 1:
        plans.append(("arm", None, None))
    return [_plot(ranked, sweep, out_dir, short, key, param) for short, key, param in plans]


def _plot(ranked: list[Arm], sweep: Sweep, out_dir: Path, short: str, key: str | None, param) -> Path:
    plt = matplotlib_pyplot()
    if key is None:  # one position per arm, best first
        labels, position = [a.label for a in ranked], {a.label: i for i, a in enumerate(ranked)}
        x_of = lambda arm: position[arm.label]  # noqa: E731
    else:
        categorical = param.grid is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                         for v in param.grid)
        labels = [str(v) for v in param.grid] if categorical else []
        x_of = (lambda arm: labels.index(str(arm.params[key]))) if categorical else (lambda arm: arm.params[key])  # noqa: E731
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.2))
    shown: list[float] = []
    for arm in ranked:
        if arm.mean is None:
            if labels:  # say why an arm on the axis has no point
                ax.text(x_of(arm), 0.03, arm.states(sweep.seeds), transform=ax.get_xaxis_transform(),
                        ha="center", fontsize=8, color="gray")
            continue
        x = x_of(arm)
        ax.scatter([x] * len(arm.values), arm.values, s=14, color="gray", alpha=0.7, zorder=2,
                   label="one seed" if not shown else None)
        low_high = arm.interval
        error = [[arm.mean - low_high[0]], [low_high[1] - arm.mean]] if low_high else None
        ax.errorbar([x], [arm.mean], yerr=error, fmt="o", color="C0", capsize=5, zorder=3,
                    label="mean, 95% interval" if not shown else None)
        shown += [*arm.values, *(low_high or ())]
    if labels:
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    elif param is not None and getattr(param.distribution, "log", False):
        ax.set_xscale("log")
    ax.set_ylim(*y_limits(shown, sweep.metric))
    ax.set_xlabel("arm" if key is None else key)
    ax.set_ylabel(axis_label(sweep.metric))
    ax.set_title(f"{sweep.name}: {sweep.metric} per {short} ({sweep.seeds} seed{'s' if sweep.seeds > 1 else ''} per arm)",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if shown:
        ax.legend(fontsize=8)
    fig.tight_layout()
    safe = re.sub(r"[^\w.-]", "_", short)
    path = out_dir / f"objective_by_{safe}.png"
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.png")
    fig.savefig(temporary, dpi=100)
    os.replace(temporary, path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the report
def write_report(study: optuna.Study, sweep: Sweep) -> Path:
    """results.md, results.csv (trials), arms.csv and objective_by_*.png under the sweep directory;
    returns results.md."""
    out_dir = sweep.dir
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study, sweep)
    ranked = arm_table(rows, sweep, study)
    counts = {s: sum(r["state"] == s for r in rows) for s in ORDER}
    text = [f"# Sweep {sweep.name}", "",
            f"{len(ranked)} arms ({sum(a.states(sweep.seeds) == 'not run' for a in ranked)} not run), "
            f"{sweep.seeds} seed{'s' if sweep.seeds > 1 else ''} each; {len(rows)} trials "
            f"({', '.join(f'{n} {s}' for s, n in counts.items() if n)}); {sweep.steps} steps each; "
            f"base {sweep.base.name}; storage {display_url(sweep.storage_url)}", "",
            "## Arms (best mean first; means and intervals over complete seeds)", "", arm_markdown(ranked, sweep)]
    note = noise_note(ranked, sweep)
    text += ["", note] if note else []
    text += ["", "## Trials", "", markdown_table(rows, sweep)]
    ranked_keys = importances(study, sweep)
    if ranked_keys:
        text += ["", "Parameter importances (fANOVA): " +
                 ", ".join(f"{sweep.space[k].short} {v:.2f}" for k, v in ranked_keys.items())]
    write_csv(rows, out_dir / "results.csv")
    arm_rows = arm_csv_rows(ranked, sweep)
    write_csv(arm_rows, out_dir / "arms.csv", list(arm_rows[0]) if arm_rows else ["arm"])
    plots = plot_objective(ranked, sweep, out_dir)
    text += ["", "Plots: " + ", ".join(p.name for p in plots)]
    path = out_dir / "results.md"
    write_atomically(path, "\n".join(text) + "\n")
    return path
