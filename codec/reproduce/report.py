"""`reproduce.md` and its figures: what the reports observed beside what this lab observed, per phase.

Reads only run directories (metrics.csv, summary.json, config.yaml), so it can be rewritten from
runs copied off another machine (`codec reproduce --report-only`).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from codec.diagnostics.replay import logged_step, replay
from codec.diagnostics.verdict import Verdict
from codec.reproduce.phases import Phase, phase
from codec.runs import load_run, series

RATIO = "val/audio/rms_ratio"
RATIO_NO_DC = "val/audio/rms_ratio_no_dc"
MEL = "val/audio/mel_l1"
MEL_BAND = re.compile(r"val/audio/mel_l1_(\d+)_(\d+)hz")  # AudioMetrics' per-band mel distances
STEP_PPL = "train/codebook/q{}/step_perplexity"
WINDOW_PPL = "train/codebook/q{}/window_perplexity"
VAL_PPL = "val/rvq/q{}/perplexity"
SETTLED = 500  # the recipe's warm-up: RMS swings before this step are not held against a run


@dataclass
class Observed:
    phase: Phase
    run_dir: Path | None
    steps: int = 0
    status: str = "missing"
    ratio: list[tuple[int, float]] = field(default_factory=list)
    mel: list[tuple[int, float]] = field(default_factory=list)
    mel_bands: list[tuple[str, float]] = field(default_factory=list)  # ("0-500 Hz", distance) at the last validation
    q0_step: list[tuple[int, float]] = field(default_factory=list)
    level_ppl: list[float] = field(default_factory=list)  # last validation, per level
    level_step_ppl: list[float] = field(default_factory=list)  # last logged smoothed per-step perplexity, per level
    level_window_ppl: list[float] = field(default_factory=list)  # last window's perplexity, per level
    codebook_size: int = 0
    verdicts: list[Verdict] = field(default_factory=list)   # the live run's (summary.json)
    replayed: list[Verdict] = field(default_factory=list)   # the rules over metrics.csv now
    seconds: float | None = None

    @property
    def settled_ratio(self) -> list[float]:
        return [v for s, v in self.ratio if s >= SETTLED] or [v for _, v in self.ratio]

    @property
    def outcome(self) -> str:
        """What the lab saw, in the reports' terms."""
        if self.status in ("interrupted", "failed"):
            return f"{self.status} at step {self.steps}"  # not an outcome of the phase: it did not run to the end
        if not self.ratio:
            return "no validation"
        if any(v.rule == "amplitude.collapse" for v in self.verdicts):
            return "collapsed"
        last = self.ratio[-1][1]
        if any(v.rule in ("amplitude.explosion", "amplitude.divergence", "training.non_finite") for v in self.verdicts):
            return "unstable"
        return "kept" if 0.5 <= last <= 2.0 else ("quiet" if last < 0.5 else "loud")

    @property
    def agrees(self) -> str:
        if self.phase.expect == "open" or not self.ratio or self.status in ("interrupted", "failed"):
            return "-"
        if self.phase.expect == "collapse":
            return "yes" if self.outcome == "collapsed" else "no"
        return "yes" if self.outcome == "kept" else "no"


def observe(ph: Phase, root: Path, seconds: float | None = None) -> Observed:
    try:
        run = load_run(root / ph.name)
    except FileNotFoundError:
        return Observed(ph, None)
    run_dir, rows, config, summary = run.path, run.metrics, run.config, run.summary or {}
    key = RATIO_NO_DC if any(RATIO_NO_DC in r for r in rows) else RATIO
    bands = sorted({(int(m[1]), int(m[2]), k) for r in rows for k in r if (m := MEL_BAND.fullmatch(k))})
    levels = 0
    while any(VAL_PPL.format(levels) in r for r in rows):
        levels += 1

    def at_steps(metric: str) -> list[tuple[int, float]]:
        return [(logged_step(s), v) for s, v in series(rows, metric)]

    return Observed(
        ph, run_dir, steps=int(summary.get("steps") or max((int(r.get("step", 0)) for r in rows), default=0)),
        status=summary.get("status", "unknown"), ratio=at_steps(key), mel=at_steps(MEL),
        mel_bands=[(f"{low}-{high} Hz", values[-1][1]) for low, high, key in bands if (values := at_steps(key))],
        q0_step=at_steps(STEP_PPL.format(0)),
        level_ppl=[(at_steps(VAL_PPL.format(i)) or [(0, math.nan)])[-1][1] for i in range(levels)],
        level_step_ppl=[(at_steps(STEP_PPL.format(i)) or [(0, math.nan)])[-1][1] for i in range(levels)],
        level_window_ppl=[(at_steps(WINDOW_PPL.format(i)) or [(0, math.nan)])[-1][1] for i in range(levels)],
        codebook_size=int(((config.get("model") or {}).get("quantizer") or {}).get("codebook_size") or 0),
        verdicts=[Verdict.from_dict(v) for v in summary.get("verdicts") or []],
        replayed=replay(rows, config), seconds=seconds)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def _mel_change(o: Observed) -> str:
    if len(o.mel) < 2:
        return "-"
    first, last = o.mel[0][1], o.mel[-1][1]
    return f"{first:.3g} -> {last:.3g} ({100 * (last - first) / first:+.0f}%)"


def _ratio_summary(o: Observed) -> str:
    if not o.ratio:
        return "-"
    settled = o.settled_ratio
    return (f"{o.ratio[0][1]:.3g} -> {o.ratio[-1][1]:.3g} (after step {SETTLED}: {min(settled):.3g}-"
            f"{max(settled):.3g})")


def _q0(o: Observed) -> str:
    if not o.q0_step:
        return "-"
    values = [v for _, v in o.q0_step]
    tail = values[-max(1, len(values) // 10):]
    return f"{values[0]:.3g} -> {statistics.median(tail):.3g}"


def _tags(verdicts: list[Verdict]) -> str:
    return ", ".join(f"{v.failure}@{v.step} {v.rule.split('.')[-1]} {v.subject}".strip() for v in verdicts) or "none"


def markdown(observed: list[Observed], command: str, hardware: str, minutes: float | None) -> str:
    lines = ["# Reproducing the reports", "",
             f"Command: `{command}`  ", f"Hardware: {hardware}  "]
    if minutes is not None:
        lines.append(f"Wall time: {minutes:.1f} min for the runs that trained this time  ")
    lines += ["", "RMS ratio = output RMS / target RMS on the validation set (without DC when logged); the reports' "
              "absolute RMS is divided by their target 0.075. q0 step perplexity: the smoothed perplexity of level "
              "0's codes within a training step, first logged -> median of the last tenth. Verdicts: the live "
              "monitors' (`summary.json`).", "",
              "| phase | reports observed | reports' RMS ratio | this lab: RMS ratio | mel distance | "
              "q0 step perplexity | val perplexity q0..qN | verdicts | lab outcome | agrees |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for o in observed:
        ppl = " ".join(_fmt(p, 2) for p in o.level_ppl) or "-"
        lines.append(f"| {o.phase.name} | {o.phase.reported} | {_fmt(o.phase.reported_ratio, 2)} | "
                     f"{_ratio_summary(o)} | {_mel_change(o)} | {_q0(o)} | {ppl} | {_tags(o.verdicts)} | "
                     f"{o.outcome} | {o.agrees} |")
    lines += ["", "## Verdicts, with their evidence", ""]
    for o in observed:
        where = f"`{o.run_dir}`" if o.run_dir else "no run directory"
        took = f", {o.seconds / 60:.1f} min" if o.seconds else ""
        lines.append(f"### {o.phase.name} ({o.status}, {o.steps} steps{took}; {where})")
        lines.append("")
        lines += [f"- {v.line()}" for v in o.verdicts] or ["- no verdict"]
        extra = [v for v in o.replayed if v.key not in {w.key for w in o.verdicts}]
        if extra:
            lines.append("- the rules replayed over metrics.csv also find: " + "; ".join(v.line() for v in extra))
        if o.ratio:
            lines.append("- RMS ratio at each validation: " + ", ".join(f"{s}: {v:.3g}" for s, v in o.ratio))
        if o.mel_bands:
            lines.append("- mel distance per band at the last validation: "
                         + ", ".join(f"{band} {value:.3g}" for band, value in o.mel_bands))
        if o.level_step_ppl:
            lines.append("- perplexity per level q0..qN at the end: within a step (smoothed) "
                         + " ".join(_fmt(p, 3) for p in o.level_step_ppl) + "; over the last window "
                         + " ".join(_fmt(p, 3) for p in o.level_window_ppl) + "; on validation "
                         + " ".join(_fmt(p, 3) for p in o.level_ppl))
        lines.append("")
    lines += ["Figures: rms_ratio.png, mel_distance.png, q0_step_perplexity.png, level_perplexity.png", ""]
    return "\n".join(lines)


def plots(observed: list[Observed], out: Path, threshold: float = 0.1, high: float = 3.0) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def figure(name, title, ylabel, curves, log=True, refs=(), xlabel="training step"):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for label, points, marker in curves:
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], marker=marker, markersize=3, label=label)
        for value, text in refs:
            ax.axhline(value, color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(text, (ax.get_xlim()[0], value), fontsize=7, color="grey", va="bottom")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    figure("rms_ratio.png", "Output level at each validation", "RMS ratio (output / target)",
           [(o.phase.name, o.ratio, "o") for o in observed],
           refs=[(1.0, "target level"), (threshold, f"collapse bound {threshold:g}"), (high, f"explosion bound {high:g}")])
    figure("mel_distance.png", "Mel distance at each validation", "mel distance (log-mel L1)",
           [(o.phase.name, o.mel, "o") for o in observed], log=False)
    sizes = {o.codebook_size for o in observed if o.codebook_size}
    figure("q0_step_perplexity.png", "Level 0: code usage within each training step",
           "perplexity of a step's codes (smoothed)", [(o.phase.name, o.q0_step, None) for o in observed],
           refs=[(s, f"codebook size {s}") for s in sorted(sizes)])
    figure("level_perplexity.png", "Code usage per level at the last validation", "validation perplexity",
           [(o.phase.name, list(enumerate(o.level_ppl)), "o") for o in observed],
           refs=[(s, f"codebook size {s}") for s in sorted(sizes)], xlabel="quantizer level")
    return made


def write(names: list[str], root: Path, out: Path, command: str, hardware: str, minutes: float | None = None,
          seconds: dict[str, float] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    observed = [observe(phase(name), root, (seconds or {}).get(name)) for name in names]
    plots(observed, out)
    path = out / "reproduce.md"
    path.write_text(markdown(observed, command, hardware, minutes))
    return path
