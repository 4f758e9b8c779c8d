"""`codec inspect CKPT [--json]`: codebook health of a checkpoint (F1, F2), from the file alone.

Every residual quantizer in the checkpoint's state_dict is found by its keys
(`<prefix>.num_active` next to `<prefix>.levels.<i>.codebook`), so this works for
any LightningModule that holds a `codec.quantize.ResidualVQ`, not only CodecModule.
Per level it reports what the stored buffers say: used and dead codes and the usage
perplexity from the EMA usage `cluster_size`, the codebook's value range against the
level's input scale (`input_scale`, an EMA of the largest |input|), how far it moved from
its init, and whether it ever trained.

The verdicts come from the same rules the live monitor applies (`codec.diagnostics.codebook`,
with the thresholds of the run's own `config.yaml` when the checkpoint sits in a run
directory), so a checkpoint gets the same F1/F2 verdicts here as in training at its step.
It also compares the `num_active` buffer with the ProgressiveRVQ schedule stored in the
checkpoint's callback state.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from codec.diagnostics.codebook import (
    MOVED_FROM_INIT,
    CodebookRule,
    LevelState,
    dead_code_count,
    drifted_usage,
    judge_level,
    level_trained,
    live_value_range,
    measured_scale,
    usage_perplexity,
)
from codec.diagnostics.verdict import Verdict
from codec.json_safe import json_safe
from codec.quantize.stats import distance_from_init

_LEVEL_KEY = re.compile(r"^(?:(.*)\.)?levels\.(\d+)\.codebook$")

UNTRAINED_REMEDY = "encode and decode with --num-levels {n} (the levels that trained)"


class InspectError(Exception):
    """The file is missing, is not a checkpoint, or holds no quantizer."""


@dataclass
class LevelFacts:
    level: int
    active: bool
    initialized: bool
    trained_steps: int
    trained: bool  # initialized, trained_steps > 0 and moved from init
    codebook_size: int
    codebook_dim: int
    used_codes: int  # codes that are not dead (0 when the level never had a training step)
    dead_codes: int  # EMA usage below the rule's fraction of the level's mean usage
    usage_perplexity: float  # 2 ** entropy of the EMA usage: codes in use over the last ~1/(1-decay) steps
    usage_total: float  # sum of the EMA usage: assignments per step
    value_std: float
    value_min: float
    value_max: float
    live_min: float  # the range of the codes in use, what the drift rule judges
    live_max: float
    input_scale: float | None  # EMA of the largest |input| the level saw in training (None: not stored)
    rejected_updates: int  # codebook updates refused because their result was not finite
    drifted_usage: float | None  # usage share of the codes beyond the drift factor (None: scale or usage unknown)
    init_abs_max: float  # max |value| of the initial codebook
    norm_mean: float
    distance_from_init: float  # mean ||c - c_init|| / max(mean ||c_init||, mean ||c||)


@dataclass
class QuantizerFacts:
    prefix: str
    num_levels: int
    codebook_size: int
    num_active: int  # the buffer: what encode/decode use
    scheduled_num_active: int | None  # ProgressiveRVQ at the checkpoint's global step
    levels: list[LevelFacts] = field(default_factory=list)

    @property
    def never_trained(self) -> list[int]:
        return [f.level for f in self.levels if not f.trained]


def untrained_levels(rvq) -> list[int]:
    """Levels of a live ResidualVQ that never trained (the rule `codec inspect` applies)."""
    return [i for i, level in enumerate(rvq.levels)
            if not level_trained(level.initialized, level.trained_steps, level.codebook, level.initial_codebook)]


# ------------------------------------------------------------------------------------ loading
def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise InspectError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise InspectError(f"{path} is not a file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors all mean "not a checkpoint"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InspectError(f"{path} is not a PyTorch checkpoint loadable with weights_only=True ({first})") from error
    if not isinstance(checkpoint, dict):
        raise InspectError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    if "state_dict" not in checkpoint:
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return {"state_dict": checkpoint}  # a bare state_dict
        raise InspectError(f"{path} has no 'state_dict' (keys: {sorted(map(str, checkpoint))[:10]}); "
                           "is it a Lightning checkpoint?")
    return checkpoint


def quantizer_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """hyper_parameters.quantizer of a CodecModule checkpoint ({} for other modules)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    quantizer = hparams.get("quantizer") if isinstance(hparams, dict) else None
    return quantizer if isinstance(quantizer, dict) else {}


def run_rules(path: Path) -> tuple[CodebookRule, str | None]:
    """The codebook rule with the thresholds of the run that wrote the checkpoint (its config.yaml,
    `diagnostics.codebook`), when the checkpoint sits in a run directory; else the defaults."""
    import yaml

    for config in (path.parent / "config.yaml", path.parent.parent / "config.yaml"):
        if config.is_file():
            try:
                settings = ((yaml.safe_load(config.read_text()) or {}).get("diagnostics") or {}).get("codebook")
            except yaml.YAMLError:
                continue
            return CodebookRule.from_settings(settings), str(config)
    return CodebookRule(), None


def schedule_state(checkpoint: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(state_key, settings) of the ProgressiveRVQ callback stored in the checkpoint, if any."""
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("ProgressiveRVQ") and isinstance(state, dict):
            return str(key), state
    return None


def _progressive(settings: dict[str, Any]):
    from dataclasses import fields

    from codec.quantize.schedule import ProgressiveSchedule

    accepted = {f.name for f in fields(ProgressiveSchedule)}
    return ProgressiveSchedule(**{k: v for k, v in settings.items() if k in accepted})


def activation_step(schedule, level: int, num_quantizers: int, until: int) -> int | None:
    """First step <= until at which the schedule has `level` active (binary search; it only grows)."""
    if schedule.num_active_at(until, num_quantizers) <= level:
        return None
    low, high = 0, until
    while low < high:
        mid = (low + high) // 2
        if schedule.num_active_at(mid, num_quantizers) > level:
            high = mid
        else:
            low = mid + 1
    return low


def quantizer_prefixes(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Prefixes p with `p.num_active` and `p.levels.0.codebook` (p may be "")."""
    found = set()
    for key in state_dict:
        match = _LEVEL_KEY.match(key)
        if match and match.group(2) == "0":
            prefix = match.group(1) or ""
            if _key(prefix, "num_active") in state_dict:
                found.add(prefix)
    return sorted(found)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def level_facts(state_dict, prefix: str, level: int, active: bool, rule: CodebookRule) -> LevelFacts:
    def get(name):
        return state_dict.get(_key(prefix, f"levels.{level}.{name}"))

    book = get("codebook").detach().float()
    init = get("initial_codebook")
    init = book if init is None else init.detach().float()
    usage = get("cluster_size")
    initialized = bool(get("initialized")) if get("initialized") is not None else True
    steps = int(get("trained_steps")) if get("trained_steps") is not None else 0
    size, dim = book.shape
    if usage is None or steps == 0:  # never updated: the buffer holds its nominal init mass
        dead, usage_total, ppl = size, 0.0, 0.0
        live_min, live_max = float(book.min()), float(book.max())
        far_share = None
    else:
        dead, usage_total, ppl = dead_code_count(usage, rule), float(usage.sum()), usage_perplexity(usage)
        live_min, live_max = live_value_range(book, usage, rule)
        far_share = drifted_usage(book, usage, get("input_scale"), rule)
    return LevelFacts(
        level=level, active=active, initialized=initialized, trained_steps=steps,
        trained=level_trained(initialized, steps, book, init),
        codebook_size=size, codebook_dim=dim, used_codes=size - dead, dead_codes=dead, usage_perplexity=ppl,
        usage_total=usage_total, value_std=float(book.std()), value_min=float(book.min()),
        value_max=float(book.max()), live_min=live_min, live_max=live_max,
        input_scale=measured_scale(get("input_scale")),
        rejected_updates=int(get("rejected_updates")) if get("rejected_updates") is not None else 0,
        drifted_usage=far_share, init_abs_max=float(init.abs().max()),
        norm_mean=float(book.norm(dim=1).mean()), distance_from_init=distance_from_init(book, init),
    )


# ----------------------------------------------------------------------------------- analysis
@dataclass
class Report:
    checkpoint: str
    global_step: int | None
    rules: dict[str, Any]
    rules_from: str | None  # the run's config.yaml the thresholds came from (None: the defaults)
    schedule: dict[str, Any] | None
    quantizers: list[QuantizerFacts]
    verdicts: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # plain lines where no failure id applies

    def to_dict(self) -> dict[str, Any]:
        quantizers = []
        for q in self.quantizers:
            d = asdict(q)
            d["never_trained"] = q.never_trained
            quantizers.append(d)
        return {
            "checkpoint": self.checkpoint,
            "global_step": self.global_step,
            "rules": self.rules,
            "rules_from": self.rules_from,
            "usage_source": "EMA usage buffer cluster_size (assignments per step)",
            "schedule": self.schedule,
            "quantizers": quantizers,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "notes": self.notes,
        }


def inspect_checkpoint(path: str | Path) -> Report:
    checkpoint = load_checkpoint(path)
    state_dict = checkpoint["state_dict"]
    prefixes = quantizer_prefixes(state_dict)
    if not prefixes:
        raise InspectError(f"{path} holds no codec.quantize.ResidualVQ state "
                           "(no '<prefix>.num_active' beside '<prefix>.levels.0.codebook')")
    step = checkpoint.get("global_step")
    step = int(step) if step is not None else None
    rule, rules_from = run_rules(Path(path))
    stored = schedule_state(checkpoint)
    schedule = _progressive(stored[1]) if stored is not None else None
    report = Report(str(path), step, asdict(rule), rules_from,
                    None if stored is None else {"state_key": stored[0], **stored[1]}, [])
    settings = quantizer_settings(checkpoint)
    reseeding = float(settings.get("dead_code_threshold") or 0) > 0 and settings.get("init") == "kmeans"
    for prefix in prefixes:
        n_levels = 1 + max(int(m.group(2)) for k in state_dict
                           if (m := _LEVEL_KEY.match(k)) and (m.group(1) or "") == prefix)
        active = int(state_dict[_key(prefix, "num_active")])
        scheduled = schedule.num_active_at(step, n_levels) if schedule is not None and step is not None else None
        facts = QuantizerFacts(prefix or "(root)", n_levels, 0, active, scheduled)
        facts.levels = [level_facts(state_dict, prefix, i, i < active, rule) for i in range(n_levels)]
        facts.codebook_size = facts.levels[0].codebook_size
        report.quantizers.append(facts)
    for prefix, facts in zip(prefixes, report.quantizers, strict=True):
        _judge(report, facts, prefix if len(prefixes) > 1 else "", schedule, step, rule, reseeding)
    return report


def _span(levels: list[int]) -> str:
    if len(levels) == 1:
        return f"level {levels[0]}"
    if levels == list(range(levels[0], levels[-1] + 1)):
        return f"levels {levels[0]}..{levels[-1]}"
    return "levels " + ", ".join(map(str, levels))


def _judge(report: Report, q: QuantizerFacts, quantizer: str, schedule, step: int | None, rule: CodebookRule,
           reseeding: bool) -> None:
    at = step if step is not None else 0
    name = f"{quantizer}: " if quantizer else ""
    never = q.never_trained
    if never:
        report.notes.append(f"{name}{_span(never)} never trained; decoding uses {q.num_active} (num_active buffer)")
    if q.scheduled_num_active is not None and q.scheduled_num_active != q.num_active:
        report.verdicts.append(Verdict(
            "F1", at,
            f"{name}num_active buffer says {q.num_active} levels but the ProgressiveRVQ schedule gives "
            f"{q.scheduled_num_active} at step {at}",
            "set the count from the schedule before saving (ProgressiveRVQ does so after every step); "
            "until then pass --num-levels to encode", "schedule.num_active", f"{quantizer}/num_active"
            if quantizer else "num_active"))
    active_untrained = [i for i in never if i < q.num_active]
    if active_untrained:
        trained_prefix = next((i for i in range(q.num_active) if i in never), q.num_active)
        remedy = (UNTRAINED_REMEDY.format(n=trained_prefix) if trained_prefix
                  else "train before decoding: no level has trained")
        # A level switched on by the schedule at the checkpoint's own step has not had its first
        # step yet: the schedule did its job (a note; encode/decode warn). Earlier, it is F1.
        just_on, failed = [], []
        for i in active_untrained:
            first = activation_step(schedule, i, q.num_levels, step) if schedule is not None and step is not None \
                else None
            (just_on if first is not None and first >= step else failed).append(i)
        if just_on:
            report.notes.append(f"{name}{_span(just_on)} switched on at step {at} by the schedule, the checkpoint's "
                                f"own step: not trained yet; {remedy}")
        if failed:
            verb, its = ("is", "its") if len(failed) == 1 else ("are", "their")
            report.verdicts.append(Verdict(
                "F1", at, f"{name}{_span(failed)} {verb} active but never trained: {its} codes are noise", remedy,
                "codebook.untrained", ",".join(f"{quantizer}/q{i}" if quantizer else f"q{i}" for i in failed)))
    for f in q.levels:
        if f.initialized and f.trained_steps > 1 and f.distance_from_init <= MOVED_FROM_INIT:
            report.notes.append(f"{name}level {f.level}: {f.trained_steps} training steps but its codebook "
                                "never moved from its init (an EMA of the quantized vectors does that: F6)")
        if not f.trained:
            continue
        if f.active and f.input_scale is None and f.trained_steps >= rule.min_trained_steps:
            report.notes.append(f"{name}level {f.level}: no input_scale stored (an older checkpoint): drift not judged")
        state = LevelState(f.level, f.active, f.initialized, f.trained_steps, f.codebook_size, f.live_min,
                           f.live_max, f.input_scale, f.dead_codes, reseeding, f.rejected_updates, f.drifted_usage)
        report.verdicts += judge_level(state, at, rule, quantizer)


# ----------------------------------------------------------------------------------- printing
def format_report(report: Report) -> str:
    lines = [f"checkpoint {report.checkpoint}"]
    if report.global_step is not None:
        lines[0] += f" at global step {report.global_step}"
    if report.schedule:
        s = report.schedule
        lines.append(f"schedule: ProgressiveRVQ every={s.get('every')} start={s.get('start')} "
                     f"initial={s.get('initial')} maximum={s.get('maximum')}")
    else:
        lines.append("schedule: no ProgressiveRVQ state in the checkpoint")
    for q in report.quantizers:
        scheduled = "" if q.scheduled_num_active is None else f", schedule says {q.scheduled_num_active}"
        lines.append("")
        lines.append(f"{q.prefix}: {q.num_levels} levels x {q.codebook_size} codes; "
                     f"num_active buffer {q.num_active}{scheduled}")
        header = (f"{'level':>5} {'active':>6} {'trained':>7} {'steps':>6} {'used':>9} {'ppl':>7} "
                  f"{'min':>8} {'max':>8} {'input':>7} {'init±':>6} {'moved':>7}")
        lines.append(header)
        for f in q.levels:
            scale = "-" if f.input_scale is None else f"{f.input_scale:.2f}"
            lines.append(
                f"{'q' + str(f.level):>5} {'yes' if f.active else 'no':>6} {'yes' if f.trained else 'NEVER':>7} "
                f"{f.trained_steps:>6} {f'{f.used_codes}/{f.codebook_size}':>9} {f.usage_perplexity:>7.1f} "
                f"{f.value_min:>8.2f} {f.value_max:>8.2f} {scale:>7} {f.init_abs_max:>6.2f} "
                f"{f.distance_from_init:>7.3f}")
    lines.append("")
    rules = report.rules
    lines.append(f"used: codes whose EMA usage is at least {rules['dead_usage_fraction']:g}x the level's mean; "
                 "ppl: perplexity of the EMA usage; input: EMA of the largest |input|; moved: mean distance from "
                 "init / the larger mean norm")
    lines.append(f"rules: drift beyond {rules['drift_factor']:g}x the input (codes with "
                 f"{100 * rules['drift_min_usage']:g}%+ of the usage), more than "
                 f"{100 * rules['max_dead_fraction']:.0f}% dead, after {rules['min_trained_steps']} steps "
                 f"({'from ' + report.rules_from if report.rules_from else 'defaults'})")
    if not report.verdicts and not report.notes:
        lines.append("no findings: every level trained, no drift, no mass of dead codes")
    lines += report.notes
    lines += [v.line() for v in report.verdicts]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="codec inspect",
        description="Codebook health of a checkpoint: levels, active count vs schedule, used/dead codes, "
                    "codebook value range, levels that never trained, F1/F2 verdicts.")
    parser.add_argument("checkpoint", help="a Lightning checkpoint (.ckpt) or a saved state_dict")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = parser.parse_args(argv[1:])
    try:
        report = inspect_checkpoint(args.checkpoint)
    except InspectError as error:
        print(f"codec inspect: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(json_safe(report.to_dict()), indent=2))
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(["inspect", *sys.argv[1:]]))
