"""A sweep file (sweeps/*.yaml): what to vary, on which base config, judged by which metric.

    base: conf/phase_1.yaml            # the LightningCLI config every trial starts from
    overrides: [--data.batch_size=8]   # fixed for every trial (command-line form)
    space:                             # Hydra override grammar, dotted LightningCLI keys
      model.quantizer.normalization: choice(none, zscore, l2, rms_scale)
    objective: {metric: val/audio/snr_db, direction: maximize}
    trials: 4                          # arms (sampled points) in the study: re-running tops it up to this
    seeds: 3                           # replicates per arm (seed_everything 0..seeds-1); default 1
    steps: 1000                        # training steps per trial
    val_every: 250                     # validation (and pruning) interval; default steps // 4
    sampler: {name: GridSampler}       # any optuna.samplers class and its arguments; default:
                                       # GridSampler for finite spaces, TPESampler otherwise
    pruner: {name: MedianPruner, n_warmup_steps: 250}   # any optuna.pruners class; NopPruner: none
    heartbeat: 60                      # seconds; a trial whose worker is silent for 2x this is re-run
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from codec.sweep.space import Param, parse_space

KEYS = {"name", "base", "overrides", "space", "objective", "trials", "seeds", "steps", "val_every", "sampler",
        "pruner", "seed", "heartbeat"}
REPO = Path(__file__).resolve().parents[2]


class SweepFileError(ValueError):
    """A sweep file that cannot run; the message names the file and the bad entry."""


@dataclass
class Sweep:
    name: str
    path: Path                          # the sweep file
    base: Path                          # the base LightningCLI config
    space: dict[str, Param]
    metric: str = "val/audio/snr_db"
    direction: str = "maximize"
    trials: int = 10                    # arms: grid points, or points a sampler proposes
    seeds: int = 1                      # replicates per arm, trained with seed_everything = 0..seeds-1
    steps: int = 1000
    val_every: int | None = None
    overrides: list[str] = field(default_factory=list)
    sampler: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    root: Path = Path("runs/sweeps")    # where trials, storage and results go: <root>/<name>/
    storage: str | None = None          # SQLAlchemy URL or journal:PATH; default: SQLite under root
    heartbeat: int = 60                 # seconds between a running trial's heartbeats (RDB storages)
    wandb: bool = True

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.dir / 'study.db').resolve()}"

    @property
    def validation_interval(self) -> int:
        every = self.val_every or max(1, self.steps // 4)
        return min(every, self.steps)

    def with_overrides(self, **changes) -> Sweep:
        """A copy with command-line overrides (trials, steps, storage, ...) where they are not None."""
        sweep = replace(self, **{k: v for k, v in changes.items() if v is not None})
        for key in ("trials", "seeds", "steps", "heartbeat"):
            if getattr(sweep, key) < 1:
                raise SweepFileError(f"{key} must be >= 1, got {getattr(sweep, key)}")
        return sweep


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    if not path.is_file():
        raise SweepFileError(f"no sweep file {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SweepFileError(f"{path}: {_yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise SweepFileError(f"{path}: expected a mapping of {sorted(KEYS)}")
    unknown = set(raw) - KEYS
    if unknown:
        raise SweepFileError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(KEYS)}")
    if "base" not in raw or "space" not in raw:
        raise SweepFileError(f"{path}: `base` (a config file) and `space` are required")
    objective = raw.get("objective") or {}
    if set(objective) - {"metric", "direction"}:
        raise SweepFileError(f"{path}: objective takes `metric` and `direction`, got {sorted(objective)}")
    direction = objective.get("direction", "maximize")
    if direction not in ("maximize", "minimize"):
        raise SweepFileError(f"{path}: objective.direction must be maximize or minimize, got {direction!r}")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and o.startswith("--") for o in overrides):
        raise SweepFileError(f"{path}: overrides must be a list of `--key=value` strings, got {overrides!r}")
    try:
        space = parse_space(raw["space"])
    except ValueError as e:
        raise SweepFileError(f"{path}: {e}") from None
    sweep = Sweep(
        name=str(raw.get("name") or path.stem), path=path, base=config_path(raw["base"], path),
        space=space, metric=objective.get("metric", "val/audio/snr_db"), direction=direction,
        trials=_integer(raw, "trials", 10, path), seeds=_integer(raw, "seeds", 1, path),
        steps=_integer(raw, "steps", 1000, path),
        val_every=raw.get("val_every"), overrides=list(overrides), sampler=dict(raw.get("sampler") or {}),
        pruner=dict(raw.get("pruner") or {}), seed=int(raw.get("seed", 0)),
        heartbeat=_integer(raw, "heartbeat", 60, path),
    )
    return sweep.with_overrides()


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: where, then what ("line 4, column 9: YAML syntax: ...")."""
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    what = " ".join(str(p) for p in (getattr(error, "context", None), getattr(error, "problem", None)) if p)
    return f"{where}YAML syntax: {what or type(error).__name__}"


def _integer(raw: dict, key: str, default: int, path: Path) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SweepFileError(f"{path}: {key} must be an integer, got {value!r}")
    return value


def config_path(base: str, sweep_file: Path) -> Path:
    """A config file named in a sweep file: as written, else relative to the sweep file, else to the repository (sweeps/ ships there)."""
    for candidate in (Path(base), sweep_file.parent / base, REPO / base):
        if candidate.is_file():
            return candidate.resolve()
    raise SweepFileError(f"{sweep_file}: config {base!r} not found (tried as given, next to the "
                         f"sweep file and under {REPO})")
