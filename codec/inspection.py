"""`codec inspect CKPT [--json]`: codebook health of a checkpoint (F1, F2), from the file alone.

Every residual quantizer in the checkpoint's state_dict is found by its keys
(`<prefix>.num_active` next to `<prefix>.levels.<i>.codebook`), so this works for
any LightningModule that holds a `codec.quantize.ResidualVQ`, not only CodecModule.
Per level it reports what the stored buffers say:

- used / dead codes from the EMA usage buffer `cluster_size` (assignments per step):
  dead = usage < max(dead_code_threshold, DEAD_USAGE_FLOOR); a level that never had a
  training step has used none (its buffer still holds the nominal init mass);
- codebook value std / min / max, and the largest |value| of its initial codebook;
- whether it ever trained: initialized, trained_steps > 0 and moved from its init
  (see `level_trained`).

It compares the `num_active` buffer with the ProgressiveRVQ schedule stored in the
checkpoint's callback state at the checkpoint's global step, and ends with verdict
lines in the words of failure-modes.md (F1: active levels that never trained;
F2: codebook values far outside their init range, most codes dead).
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

from codec.json_safe import json_safe
from codec.quantize.codebook import DEAD_USAGE_FLOOR
from codec.quantize.stats import distance_from_init

# A level "moved from init" when its mean codeword distance from init, relative to the larger mean
# norm (init or now), exceeds this (float32 round-off of an untouched codebook is 0).
MOVED_FROM_INIT = 1e-6
# F2 thresholds: values beyond this multiple of the init range, dead codes beyond this fraction.
DRIFT_FACTOR = 5.0
DEAD_FRACTION = 0.75

_LEVEL_KEY = re.compile(r"^(?:(.*)\.)?levels\.(\d+)\.codebook$")

F1_REMEDY = ("decode with the levels that trained (`codec encode --num-levels N`), or train on past "
             "the activation; the active count is the `num_active` buffer, restored from the checkpoint")
F2_REMEDY = ("k-means init from data, dead-code replacement (quantizer.dead_code_threshold), a lower "
             "EMA decay or L2/cosine lookup (phase_b); watch per-level usage and codebook norms")


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
    used_codes: int  # EMA usage >= dead threshold (0 when the level never had a training step)
    dead_codes: int
    usage_total: float  # sum of the EMA usage: assignments per step
    value_std: float
    value_min: float
    value_max: float
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


def level_trained(initialized: bool, trained_steps: int, codebook: torch.Tensor,
                  initial_codebook: torch.Tensor) -> bool:
    """A level trained when it was initialized, had training steps and moved from its init.

    One step is the exception to "moved": a k-means init is followed by the EMA step on the same
    batch, whose assignments are the k-means ones, so the codebook stays at the means (a fixed
    point) although it was fitted to data."""
    steps = int(trained_steps)
    return bool(initialized) and steps > 0 and (steps == 1 or not never_moved(codebook, initial_codebook))


def never_moved(codebook: torch.Tensor, initial_codebook: torch.Tensor) -> bool:
    return distance_from_init(codebook, initial_codebook) <= MOVED_FROM_INIT




def untrained_levels(rvq) -> list[int]:
    """Levels of a live ResidualVQ that never trained (same rule as `inspect`)."""
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


def dead_code_threshold(checkpoint: dict[str, Any]) -> float:
    """hyper_parameters.quantizer.dead_code_threshold when stored (CodecModule), else the floor;
    never below DEAD_USAGE_FLOOR (as Codebook.dead_code_mask)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    quantizer = hparams.get("quantizer") if isinstance(hparams, dict) else None
    threshold = quantizer.get("dead_code_threshold") if isinstance(quantizer, dict) else None
    threshold = float(threshold) if isinstance(threshold, (int, float)) else DEAD_USAGE_FLOOR
    return max(threshold, DEAD_USAGE_FLOOR)


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


def level_facts(state_dict, prefix: str, level: int, active: bool, threshold: float) -> LevelFacts:
    def get(name):
        return state_dict.get(_key(prefix, f"levels.{level}.{name}"))

    book = get("codebook").detach().float()
    init = get("initial_codebook")
    init = book if init is None else init.detach().float()
    usage = get("cluster_size")
    initialized = bool(get("initialized")) if get("initialized") is not None else True
    steps = int(get("trained_steps")) if get("trained_steps") is not None else 0
    size, dim = book.shape
    if usage is None or steps == 0:
        used, usage_total = 0, 0.0  # never updated: the buffer holds its nominal init mass
    else:
        used, usage_total = int((usage >= threshold).sum()), float(usage.sum())
    return LevelFacts(
        level=level, active=active, initialized=initialized, trained_steps=steps,
        trained=level_trained(initialized, steps, book, init),
        codebook_size=size, codebook_dim=dim, used_codes=used, dead_codes=size - used,
        usage_total=usage_total, value_std=float(book.std()), value_min=float(book.min()),
        value_max=float(book.max()), init_abs_max=float(init.abs().max()),
        norm_mean=float(book.norm(dim=1).mean()), distance_from_init=distance_from_init(book, init),
    )


# ----------------------------------------------------------------------------------- analysis
@dataclass
class Report:
    checkpoint: str
    global_step: int | None
    dead_code_threshold: float
    schedule: dict[str, Any] | None
    quantizers: list[QuantizerFacts]
    verdicts: list = field(default_factory=list)  # codec.callbacks.verdict.Verdict
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
            "dead_code_threshold": self.dead_code_threshold,
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
    threshold = dead_code_threshold(checkpoint)
    stored = schedule_state(checkpoint)
    schedule = _progressive(stored[1]) if stored is not None else None
    report = Report(str(path), step, threshold,
                    None if stored is None else {"state_key": stored[0], **stored[1]}, [])
    for prefix in prefixes:
        n_levels = 1 + max(int(m.group(2)) for k in state_dict
                           if (m := _LEVEL_KEY.match(k)) and (m.group(1) or "") == prefix)
        active = int(state_dict[_key(prefix, "num_active")])
        scheduled = schedule.num_active_at(step, n_levels) if schedule is not None and step is not None else None
        facts = QuantizerFacts(prefix or "(root)", n_levels, 0, active, scheduled)
        facts.levels = [level_facts(state_dict, prefix, i, i < active, threshold) for i in range(n_levels)]
        facts.codebook_size = facts.levels[0].codebook_size
        report.quantizers.append(facts)
    for facts in report.quantizers:
        _judge(report, facts, schedule, step)
    return report


def _span(levels: list[int]) -> str:
    if len(levels) == 1:
        return f"level {levels[0]}"
    if levels == list(range(levels[0], levels[-1] + 1)):
        return f"levels {levels[0]}..{levels[-1]}"
    return "levels " + ", ".join(map(str, levels))


def _judge(report: Report, q: QuantizerFacts, schedule, step: int | None) -> None:
    from codec.callbacks.verdict import Verdict

    at = step if step is not None else 0
    name = "" if len(report.quantizers) == 1 else f"{q.prefix}: "
    never = q.never_trained
    if never:
        report.notes.append(f"{name}{_span(never)} never trained; decoding uses {q.num_active} (num_active buffer)")
    if q.scheduled_num_active is not None and q.scheduled_num_active != q.num_active:
        report.verdicts.append(Verdict(
            "F1", at,
            f"{name}num_active buffer says {q.num_active} levels but the ProgressiveRVQ schedule gives "
            f"{q.scheduled_num_active} at step {at}",
            "set the count from the schedule before saving (ProgressiveRVQ does so after every step); "
            "until then pass --num-levels to encode"))
    active_untrained = [i for i in never if i < q.num_active]
    if active_untrained:
        trained_prefix = next((i for i in range(q.num_active) if i in never), q.num_active)
        when = ""
        if schedule is not None and step is not None:
            first = activation_step(schedule, active_untrained[0], q.num_levels, step)
            if first is not None:
                when = f" (activated at step {first}"
                when += ", checkpoint saved before its first step)" if first >= step else ")"
        verb = "is" if len(active_untrained) == 1 else "are"
        its = "its" if len(active_untrained) == 1 else "their"
        remedy = (f"encode with --num-levels {trained_prefix} (the levels that trained)" if trained_prefix
                  else "train before decoding: no level has trained")
        report.verdicts.append(Verdict(
            "F1", at,
            f"{name}{_span(active_untrained)} {verb} active but never trained: {its} codes are noise{when}",
            remedy))
    # The input scale: the widest initial codebook of the stack. k-means puts level 0 on the inputs;
    # a deeper level's residuals can start at zero (then its own init range says nothing).
    init_range = max((f.init_abs_max for f in q.levels if f.initialized), default=0.0)
    for f in q.levels:
        if f.initialized and f.trained_steps > 1 and f.distance_from_init <= MOVED_FROM_INIT:
            report.notes.append(f"{name}level {f.level}: {f.trained_steps} training steps but its codebook "
                                "never moved from its init (an EMA of the quantized vectors does that: F6)")
        if not f.trained:
            continue
        reach = max(abs(f.value_min), abs(f.value_max))
        if init_range > 0 and reach > DRIFT_FACTOR * init_range:
            report.verdicts.append(Verdict(
                "F2", at,
                f"{name}level {f.level} codebook drifted: values in [{f.value_min:.1f}, {f.value_max:.1f}] "
                f"(std {f.value_std:.2f}), {reach / init_range:.0f}x the stack's init range "
                f"±{init_range:.1f}", F2_REMEDY))
        if f.dead_codes > DEAD_FRACTION * f.codebook_size:
            report.verdicts.append(Verdict(
                "F2", at,
                f"{name}level {f.level}: {f.dead_codes}/{f.codebook_size} codes dead "
                f"(EMA usage < {report.dead_code_threshold:g} assignments per step), {f.used_codes} used",
                F2_REMEDY))


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
        header = (f"{'level':>5} {'active':>6} {'trained':>7} {'steps':>6} {'used':>9} {'dead':>6} "
                  f"{'std':>7} {'min':>8} {'max':>8} {'init±':>6} {'moved':>7}")
        lines.append(header)
        for f in q.levels:
            lines.append(
                f"{'q' + str(f.level):>5} {'yes' if f.active else 'no':>6} {'yes' if f.trained else 'NEVER':>7} "
                f"{f.trained_steps:>6} {f'{f.used_codes}/{f.codebook_size}':>9} {f.dead_codes:>6} "
                f"{f.value_std:>7.3f} {f.value_min:>8.2f} {f.value_max:>8.2f} {f.init_abs_max:>6.2f} "
                f"{f.distance_from_init:>7.3f}")
    lines.append("")
    lines.append(f"used/dead: from the EMA usage buffer (cluster_size); dead = usage < "
                 f"{report.dead_code_threshold:g} assignments per step; moved = mean distance from init / the larger mean norm (init or now)")
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
