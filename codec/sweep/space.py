"""Search spaces in Hydra's override grammar, parsed by hydra-core, mapped to Optuna distributions.

    model.quantizer.normalization: choice(none, zscore, l2, rms_scale)  -> categorical
    optimizer.init_args.lr: tag(log, interval(1e-4, 1e-2))             -> float, log scale
    model.quantizer.decay: interval(0.9, 0.999)                        -> float
    model.quantizer.codebook_size: tag(int, log, interval(16, 1024))   -> int (Hydra's interval is float)
    model.quantizer.num_quantizers: range(2, 9, 2)                     -> int 2, 4, 6, 8 (stop excluded)

Hydra's grammar has no `null` inside `choice(...)`; write the quoted string `'null'`, which the
LightningCLI reads as None for optional keys (`choice('null', 8)` for `codebook_dim`). Lists and
dicts inside a choice become their YAML text (`choice([2,4],[2,4,5])`), as Optuna's categorical
values must be plain scalars; the CLI parses them back.

The one key that is not a config key is `config`: `config: choice(conf/phase_1.yaml, ...)` loads a
whole config file per arm after the base (sweeps/phases.yaml), as `-c` would.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import Trial

KNOWN_TAGS = {"log", "int"}
CONFIG_KEY = "config"  # a whole config file per arm


class SearchSpaceError(ValueError):
    """A search-space entry that cannot be parsed or mapped; the message names the entry."""


@dataclass(frozen=True)
class Param:
    key: str                        # dotted LightningCLI key, e.g. model.quantizer.normalization
    expression: str                 # the entry as written in the sweep file
    distribution: BaseDistribution

    @property
    def short(self) -> str:
        """Last component of the key: the label used in run names, W&B tags and table headers."""
        return self.key.rsplit(".", 1)[-1]

    @property
    def grid(self) -> list | None:
        """Every value, when the space is finite (a grid sampler can enumerate it), else None."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return list(d.choices)
        if isinstance(d, IntDistribution) and not d.log:
            return list(range(d.low, d.high + 1, d.step))
        return None

    def suggest(self, trial: Trial) -> Any:
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(self.key, d.choices)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.key, d.low, d.high, step=d.step, log=d.log)
        return trial.suggest_float(self.key, d.low, d.high, step=d.step, log=d.log)

    def examples(self) -> list:
        """Values that exercise the space's edges: every choice, or both bounds (for validation)."""
        d = self.distribution
        return list(d.choices) if isinstance(d, CategoricalDistribution) else [d.low, d.high]


def parse_space(space: dict[str, Any]) -> dict[str, Param]:
    """{dotted key: grammar string} -> {dotted key: Param}; raises SearchSpaceError naming the entry."""
    if not isinstance(space, dict) or not space:
        raise SearchSpaceError("the sweep's `space` must be a non-empty mapping of dotted key -> "
                               "choice(...) / interval(...) / range(...)")
    parser = OverridesParser.create()
    params = {}
    for key, expression in space.items():
        entry = f"{key}: {expression}"
        if key != CONFIG_KEY and not (isinstance(key, str) and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", key)):
            raise SearchSpaceError(f"space entry {entry!r}: the key must be a dotted config key "
                                   "such as model.quantizer.normalization")
        try:
            override = parser.parse_override(f"{key}={expression}")
        except HydraException as e:
            raise SearchSpaceError(f"space entry {entry!r} is not valid override grammar: {e}") from None
        if not override.is_sweep_override():
            raise SearchSpaceError(f"space entry {entry!r} is a single value, not a sweep; put fixed "
                                   "values under `overrides`")
        try:
            params[key] = Param(key, str(expression), _distribution(override.value()))
        except SearchSpaceError as e:
            raise SearchSpaceError(f"space entry {entry!r}: {e}") from None
    return params


def _distribution(sweep) -> BaseDistribution:
    tags = set(sweep.tags)
    if tags - KNOWN_TAGS:
        raise SearchSpaceError(f"unknown tag(s) {sorted(tags - KNOWN_TAGS)}; known: {sorted(KNOWN_TAGS)}")
    if getattr(sweep, "shuffle", False):
        raise SearchSpaceError("shuffle(...) has no meaning for a sampler; remove it")
    if isinstance(sweep, ChoiceSweep):
        if tags:
            raise SearchSpaceError("tags apply to interval(...) only")
        choices = [_scalar(v) for v in sweep.list]
        if len(set(map(repr, choices))) != len(choices):
            raise SearchSpaceError("choice(...) lists a value twice")
        return CategoricalDistribution(choices)
    if isinstance(sweep, RangeSweep):
        values = _range_values(sweep)
        if all(isinstance(v, int) for v in values):
            return IntDistribution(values[0], values[-1], step=values[1] - values[0] if len(values) > 1 else 1)
        return CategoricalDistribution(values)
    if isinstance(sweep, IntervalSweep):
        low, high, log = sweep.start, sweep.end, "log" in tags
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise SearchSpaceError(f"interval({low}, {high}) needs finite bounds with low < high")
        if log and low <= 0:
            raise SearchSpaceError("tag(log, ...) needs a positive lower bound")
        if "int" in tags:
            if not (float(low).is_integer() and float(high).is_integer()):
                raise SearchSpaceError("tag(int, ...) needs integer bounds")
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise SearchSpaceError(f"{type(sweep).__name__} is not supported; use choice, range or interval")


def _range_values(sweep: RangeSweep) -> list:
    start, stop, step = sweep.start, sweep.stop, sweep.step
    if step == 0 or (stop - start) / step <= 0:
        raise SearchSpaceError(f"range({start}, {stop}, {step}) is empty")
    count = math.ceil((stop - start) / step - 1e-9)
    values = [start + i * step for i in range(count)]
    # Float steps accumulate error (0.1 + 0.2); round to the step's precision.
    return values if isinstance(step, int) and isinstance(start, int) else [round(v, 12) for v in values]


def _scalar(value: Any) -> Any:
    """Optuna's categorical values must be None/bool/int/float/str: encode the rest as YAML/JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, separators=(",", ":"))


def cli_value(value: Any) -> str:
    """A sampled value as the LightningCLI reads it on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def arm_label(params: dict[str, Any], space: dict[str, Param]) -> str:
    """Filesystem- and W&B-safe name of an arm: `normalization=zscore,decay=0.99`."""
    parts = []
    for key, value in params.items():
        shown = f"{value:.4g}" if isinstance(value, float) else cli_value(value)
        if key == CONFIG_KEY:
            shown = Path(str(value)).stem
        parts.append(f"{space[key].short}=" + re.sub(r"[^\w.+-]", "_", shown))  # "," joins the parts
    return ",".join(parts)[:200]
