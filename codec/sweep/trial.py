"""One trial: sampled values -> LightningCLI arguments -> a normal run directory -> the objective.

Each trial writes `<sweep dir>/trial_NNNN/<arm>/version_0/` (config.yaml, metrics.csv,
checkpoints/, examples/), where <arm> is the varied values (`normalization=zscore`), and is its own
W&B run: grouped by sweep (`group=<sweep name>`), typed and tagged by arm (`job_type=<arm>`, tags
`sweep:<name>`, the values and `seed:<k>`), so W&B's group view compares the arms and, grouped by
job type, averages each arm's seeds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path

import optuna

from codec.sweep import arms
from codec.sweep.config import Sweep, SweepFileError, config_path
from codec.sweep.results import FIGURES, run_figures
from codec.sweep.space import CONFIG_KEY, arm_label, cli_value
from codec.sweep.study import recover, worker_identity


class SpaceKeyError(ValueError):
    """A space (or override) entry the LightningCLI rejects; raised before any trial starts."""


def base_args(sweep: Sweep) -> list[str]:
    """Arguments shared by every trial: base config, sweep length, fixed overrides."""
    return ["-c", str(sweep.base), f"--trainer.max_steps={sweep.steps}",
            f"--trainer.val_check_interval={sweep.validation_interval}", "--trainer.check_val_every_n_epoch=null",
            *sweep.overrides]


def param_args(sweep: Sweep, params: dict) -> list[str]:
    """`--key=value` per sampled value; a `config` arm becomes `--config=<file>` (resolved like base)."""
    return [f"--config={config_path(value, sweep.path)}" if key == CONFIG_KEY else f"--{key}={cli_value(value)}"
            for key, value in params.items()]


def trial_args(sweep: Sweep, params: dict, number: int, seed: int = 0) -> list[str]:
    label = arm_label(params, sweep.space)
    seeds = [f"--seed_everything={seed}"] if sweep.seeds > 1 else []  # one seed: the config's own
    # Order matters: base, then the arm, then what identifies the run (a phase file names its run).
    return [*base_args(sweep), *param_args(sweep, params), *seeds,
            f"--run.root={sweep.dir / f'trial_{number:04d}'}", f"--run.name={label}",
            f"--run.tags={json.dumps(wandb_tags(sweep, label, seed))}", f"--run.wandb={str(sweep.wandb).lower()}"]


def wandb_tags(sweep: Sweep, label: str, seed: int) -> list[str]:
    return [tag[:64] for tag in (f"sweep:{sweep.name}", *label.split(","), f"seed:{seed}")]  # W&B: 64 chars


def validate_space(sweep: Sweep) -> None:
    """Parse (not build) the CLI config with every choice and both bounds of every interval.

    jsonargparse checks each key and the type of each value here, in about 40 ms per parse, so a
    typo in a key stops the sweep before the first trial. Values that only the model can reject
    (an unknown normalization name) fail their trial instead.
    """
    parser = _parser(sweep)
    for key, param in sweep.space.items():
        entry = f"{key}: {param.expression}"
        for value in param.examples():
            try:
                args = [*base_args(sweep), *param_args(sweep, {key: value})]
                with contextlib.redirect_stderr(io.StringIO()):
                    parser.parse_args(args)
            except SweepFileError as e:
                raise SpaceKeyError(f"space entry {entry!r}: {e}") from None
            except (Exception, SystemExit) as e:  # jsonargparse exits on some errors
                raise SpaceKeyError(f"{sweep.path}: space entry {entry!r} is rejected by the CLI: "
                                    f"{_first_lines(e)}") from None


def _parser(sweep: Sweep):
    from codec.cli import CodecCLI

    class ParseOnly(CodecCLI):
        def instantiate_classes(self) -> None:  # parse and check only; build nothing
            pass

    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            cli = ParseOnly(args=base_args(sweep), run=False)
        except SystemExit:
            raise SpaceKeyError(f"{sweep.path}: base config {sweep.base} or overrides are rejected by "
                                f"the CLI: {err.getvalue().strip()[-500:]}") from None
    cli.parser.exit_on_error = False
    return cli.parser


def _first_lines(error: BaseException, limit: int = 12) -> str:
    return "\n".join(str(error).strip().splitlines()[:limit]) or type(error).__name__


def _describe(error: BaseException) -> str:
    """The root cause first (jsonargparse wraps a config's own ValueError in a long Union message),
    then the error as raised."""
    root = error
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    outer = f"{type(error).__name__}: {error}"
    return outer if root is error else f"{type(root).__name__}: {root}\n{outer}"


class Skipped(optuna.TrialPruned):
    """A trial with nothing to do: its (arm, seed) is taken, or the study holds every arm it owes."""


def claim(trial: optuna.Trial, sweep: Sweep) -> tuple[dict, int]:
    """(values, seed) this trial trains, or raises Skipped (before anything is suggested or trained).

    Queued trials (a planned grid arm, a replicate, a re-run) carry their seed; a sampled one is a
    new arm, seed 0, and queues the arm's other seeds (under the storage lock, through the same
    reconciliation every worker runs, so that no seed is queued twice)."""
    trial.set_user_attr(arms.WORKER, worker_identity())
    study = trial.study
    earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
    if arms.SEED in trial.user_attrs:
        queued, seed = trial.user_attrs[arms.PARAMS], int(trial.user_attrs[arms.SEED])
        owner = arms.taken(earlier).get((arms.arm_key(queued), seed))
        if owner is not None:
            _skip(trial, f"arm {arm_label(queued, sweep.space)} seed {seed} is taken by trial {owner.number}")
        return {key: param.suggest(trial) for key, param in sweep.space.items()}, seed
    if arms.is_grid(sweep):
        _skip(trial, "nothing queued: a grid sweep runs only its planned arms")
    if arms.arms_to_sample(sweep, earlier) == 0:
        _skip(trial, f"the study already holds its {sweep.trials} arms")
    params = {key: param.suggest(trial) for key, param in sweep.space.items()}
    trial.set_user_attr(arms.PARAMS, params)
    trial.set_user_attr(arms.SEED, 0)
    if sweep.seeds > 1:
        recover(study, sweep)
    return params, 0


def _skip(trial: optuna.Trial, reason: str):
    trial.set_user_attr(arms.SKIPPED, reason)
    raise Skipped(reason)


def objective(trial: optuna.Trial, sweep: Sweep) -> float:
    """Train one (arm, seed); returns the objective metric at the last validation.

    Pruned: raises optuna.TrialPruned with the reason (also in user attr `pruned`). Any other
    error (SystemExit from the CLI included) is stored in user attr `error` and re-raised as a
    RuntimeError, which the study records as FAIL and steps over.
    """
    from codec.cli import CodecCLI
    from codec.sweep.pruning import TrialPruning

    params, seed = claim(trial, sweep)
    label = arm_label(params, sweep.space)
    trial.set_user_attr(arms.ARM, label)
    err = io.StringIO()
    pruning = None
    try:
        with contextlib.redirect_stderr(err):  # jsonargparse prints its reason, then exits
            cli = CodecCLI(args=trial_args(sweep, params, trial.number, seed), run=False)
        _own_wandb_run(cli, sweep, label, seed, trial.number)
        pruning = TrialPruning(trial, monitor=sweep.metric)
        cli.trainer.callbacks.append(pruning)
        run_dir = Path(cli.trainer.log_dir).resolve()
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        finally:  # what the results table shows of the run, readable on machines without its run dir
            _store_figures(trial, run_dir)
        pruning.stop_if_collapsed(cli.trainer)  # collapse declared by the last validation
        if pruning.reason:
            trial.set_user_attr("pruned", pruning.reason)
            raise optuna.TrialPruned(pruning.reason)
        value = cli.trainer.callback_metrics.get(sweep.metric)
        if value is None:
            known = sorted(k for k in cli.trainer.callback_metrics if k.startswith("val/"))
            raise KeyError(f"objective {sweep.metric!r} was never logged; validation logged {known}")
        value = float(value)
        if not math.isfinite(value):
            trial.set_user_attr("pruned", f"{sweep.metric} is {value}")
            raise optuna.TrialPruned(f"{sweep.metric} is {value}")
        return value
    except optuna.TrialPruned:
        raise
    except KeyboardInterrupt:
        raise
    except (Exception, SystemExit) as e:
        if pruning is not None and pruning.reason:  # divergence surfaced as the model's error
            trial.set_user_attr("pruned", pruning.reason)
            raise optuna.TrialPruned(pruning.reason) from e
        detail = err.getvalue().strip()[-800:] if isinstance(e, SystemExit) else ""
        message = _describe(e) + (f"\n{detail}" if detail else "")
        trial.set_user_attr("error", message)
        raise RuntimeError(message) from e
    finally:
        _finish_wandb(trial)


def _store_figures(trial: optuna.Trial, run_dir: Path) -> None:
    try:
        trial.set_user_attr(FIGURES, run_figures(run_dir))
    except Exception as e:  # noqa: BLE001 - never hide the trial's own outcome behind this
        print(f"trial {trial.number}: its figures were not stored ({type(e).__name__}: {e})", file=sys.stderr)


def _own_wandb_run(cli, sweep: Sweep, label: str, seed: int, number: int) -> None:
    """Give the trial a W&B run of its own: grouped by sweep, typed and tagged by arm.

    The CLI's logger groups by run name (the arm); a sweep groups by sweep instead and keeps the
    arm as job type, so W&B's group view shows every arm of the sweep side by side."""
    from lightning.pytorch.loggers import WandbLogger

    loggers = []
    for logger in cli.trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger = WandbLogger(project=logger.name,  # Lightning's `name` is the W&B project
                                 name=f"trial_{number:04d} {label} seed={seed}", group=sweep.name,
                                 job_type=label[:64], tags=wandb_tags(sweep, label, seed), save_dir=logger.save_dir)
        loggers.append(logger)
    cli.trainer.loggers = loggers


def _finish_wandb(trial: optuna.Trial) -> None:
    """End the trial's W&B run, so that the next trial in this process starts its own (a WandbLogger
    reuses any run still open)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        trial.set_user_attr("wandb_run", wandb.run.id)
        wandb.finish()
