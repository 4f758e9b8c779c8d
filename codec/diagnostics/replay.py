"""The rules over a finished run's `metrics.csv`: what `codec compare` and `codec reproduce` show.

The monitors log every number their rules decide on (`train/codebook/q{i}/*`, `val/codebook/q{i}/*`,
`val/usage/q{i}/*`, `val/audio/*`, `train/params/*`), so replaying the rules over the logged rows
reaches the verdicts the live run reached, at the same steps, with the thresholds of the run's own
config (or new thresholds, to ask "what would these rules have said?"). Runs from before a rule
existed get its verdict where their metrics allow it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from codec.diagnostics.amplitude import RMS_RATIO, TRAIN_RATIO, AmplitudeRule, AmplitudeTracker
from codec.diagnostics.codebook import CodebookRule, LevelState, judge_level
from codec.diagnostics.consistency import ConsistencyRule, judge_modes
from codec.diagnostics.usage import UsageRule, UsageTracker
from codec.diagnostics.verdict import Verdict

_STEP_KEYS = ("step_perplexity", "last_step_perplexity", "best_step_perplexity", "low_usage_share", "step_rows",
              "step_codes_used")
_LEVEL = re.compile(r"^(train|val)/(codebook|usage)/q(\d+)/(.+)$")


def logged_step(csv_step: int) -> int:
    """The global step a metrics.csv row stands for: a row's step is the number of optimizer steps
    the model had taken when the value was measured (codec/validation_schedule.py), so what a
    monitor measured after step N's update, and the validation that followed it, are at N: the
    step the verdicts name."""
    return int(csv_step)


def steps_in_order(rows: Iterable[Mapping[str, float]]) -> list[tuple[int, dict[str, float]]]:
    """Rows merged per step (a step's metrics come in several rows), in step order."""
    merged: dict[int, dict[str, float]] = {}
    for row in rows:
        if "step" in row:
            merged.setdefault(int(row["step"]), {}).update(row)
    return sorted(merged.items())


def _levels(values: Mapping[str, float]) -> dict[tuple[str, str, int], dict[str, float]]:
    out: dict[tuple[str, str, int], dict[str, float]] = {}
    for key, value in values.items():
        match = _LEVEL.match(key)
        if match:
            stage, group, level, name = match.groups()
            out.setdefault((stage, group, int(level)), {})[name] = value
    return out


def _setting(config: Mapping[str, Any] | None, *path: str, default=None):
    node: Any = config or {}
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return default
        node = node[key]
    return node


def extra_layers(config: Mapping[str, Any] | None) -> list[str]:
    """The layers between quantizer and out_proj a config builds (F4's evidence)."""
    layers = []
    if _setting(config, "model", "structure", "final_conv", default="none") not in (None, "none"):
        layers.append("final_conv")
    if _setting(config, "model", "quantizer", "post_scale", default=False):
        layers.append("post_scale")
    return layers


def replay(rows: Iterable[Mapping[str, float]], config: Mapping[str, Any] | None = None,
           overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list[Verdict]:
    """Every verdict the rules reach on logged metrics `rows` of a run with `config` (its config.yaml).

    `overrides`: rule settings per section (`amplitude`, `codebook`, `usage`) that replace the
    run's, e.g. {"amplitude": {"high": 5.0}}."""
    settings = dict(_setting(config, "diagnostics", default={}) or {})
    for section, values in (overrides or {}).items():
        settings[section] = {**(settings.get(section) or {}), **values}
    size = int(_setting(config, "model", "quantizer", "codebook_size", default=0) or 0)
    reseeding = float(_setting(config, "model", "quantizer", "dead_code_threshold", default=0) or 0) > 0 and \
        _setting(config, "model", "quantizer", "init", default="kmeans") == "kmeans"
    amplitude = AmplitudeTracker(AmplitudeRule.from_settings(settings.get("amplitude")), extra_layers(config))
    usage_rule = UsageRule.from_settings(settings.get("codebook"))
    codebook_rule = CodebookRule.from_settings(settings.get("codebook"))
    consistency_rule = ConsistencyRule.from_settings(settings.get("usage"))
    every = int((settings.get("codebook") or {}).get("every_n_steps") or 250)
    usage = UsageTracker(usage_rule, size)
    verdicts: list[Verdict] = []
    active_since: dict[int, int] = {}
    seen_f7: set[int] = set()
    latest: dict[str, float] = {}
    for csv_step, values in steps_in_order(rows):
        step = logged_step(csv_step)
        latest.update({k: v for k, v in values.items() if k.startswith("train/loss/")})
        levels = _levels(values)
        for (stage, group, level), logged in sorted(levels.items()):
            if (stage, group) != ("train", "codebook"):
                continue
            if "active_since" in logged:
                active_since[level] = int(logged["active_since"])
            if "low_usage_share" in logged:
                verdicts += usage.steps(step, level, {k: logged[k] for k in _STEP_KEYS if k in logged})
            if "window_codes_used" in logged and active_since.get(level, step) <= step - every + 1:
                active = int(values.get("train/codebook/active_levels", 0))
                verdicts += usage.window(step, level, logged["window_codes_used"], every, active)
            if "value_max" in logged and "trained_steps" in logged:
                state = LevelState(level, True, True, int(logged["trained_steps"]), size, logged["value_min"],
                                   logged["value_max"], logged.get("input_scale"), int(logged.get("dead_codes", 0)),
                                   reseeding, int(logged.get("rejected_updates", 0)), logged.get("drifted_usage"))
                verdicts += judge_level(state, step, codebook_rule)
        for (stage, group, level), logged in sorted(levels.items()):
            if (stage, group) == ("val", "codebook") and "perplexity" in logged and "rows" in logged:
                since = active_since.get(level)
                if step > 0 and since is not None and since + usage_rule.grace_steps <= step:
                    verdicts += usage.validation(step, level, logged["perplexity"], logged["rows"])
            if (stage, group) == ("val", "usage") and "perplexity_eval_mode" in logged and level not in seen_f7:
                verdict = judge_modes(step, level, logged, consistency_rule)
                if verdict is not None:
                    seen_f7.add(level)
                    verdicts.append(verdict)
        if TRAIN_RATIO in values:
            verdicts += amplitude.steps(step, values)
        if RMS_RATIO in values:
            verdicts += amplitude.observe(step, {**latest, **values})
    first: dict[tuple, Verdict] = {}
    for verdict in verdicts:  # each finding once, at its first step (as the monitors record them)
        first.setdefault(verdict.key, verdict)
    return sorted(first.values(), key=lambda v: (v.step, v.failure, v.rule, v.subject))
