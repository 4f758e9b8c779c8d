"""The LightningCLI behind `codec fit` / `lightning fit`: defaults, run directories, loggers, diagnostics.

Every fit writes a run directory `<run.root>/<run.name>/version_N/` holding the
resolved `config.yaml`, `metrics.csv` (the CSV logger is always on),
`summary.json` and `checkpoints/`; W&B joins in offline mode unless WANDB_MODE
says otherwise, or is left out with `--run.wandb=false`. `--trainer.default_root_dir`,
when given, is the run root. A fit resumed with `--ckpt_path` of a run's checkpoint
continues that run's directory (`codec/resume.py`). Checkpoints are written atomically
(`codec/atomic_checkpoint.py`), and every fit validates where it starts and where it ends
(`codec/validation_schedule.py`).

Bad values (an unknown key, a value a config class rejects, encoder strides whose hop does not
divide the segment) stop the command with one line naming them, exit status 2, before any run
directory exists.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import CheckpointIO

from codec.atomic_checkpoint import AtomicCheckpointIO
from codec.callbacks import AmplitudeMonitor, CodebookMonitor, RunSummary, UsageConsistencyMonitor
from codec.callbacks.audio_examples import AudioExamples
from codec.data import AudioDataModule
from codec.metrics_csv import RunCSVLogger
from codec.module import CodecModule
from codec.resume import ResumeState, run_directory_of, wandb_run_id
from codec.threads import share_with_local_ranks
from codec.validation_schedule import ValidateAtStartAndEnd

DEFAULTS = Path(__file__).resolve().parents[1] / "conf" / "defaults.yaml"

# Monitors every run gets (settings under `diagnostics.<key>` in any config; `--run.diagnostics=false`
# leaves them all out). The summary comes last so it sees every verdict.
DIAGNOSTICS = {
    "codebook": CodebookMonitor,
    "usage": UsageConsistencyMonitor,
    "amplitude": AmplitudeMonitor,
    "examples": AudioExamples,
    "summary": RunSummary,
}

# jsonargparse's wording around the reason a value was rejected; dropped from the one-line error.
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
          "Expected a <class 'NoneType'>")


def one_line(message: str) -> str:
    """jsonargparse's multi-line rejection as one line: the key and the reasons, without the noise."""
    parts = [line.strip().lstrip("-").strip() for line in str(message).splitlines()]
    return " ".join(p for p in parts if p and not p.startswith(_NOISE))


class OneLineErrorParser(LightningArgumentParser):
    """Parse errors as `codec fit: error: <what and why>` on one line (not the whole usage), exit status 2."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # callers that catch the error (sweeps) get jsonargparse's own
            return super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        print(f"{prog}: error: {one_line(message)} (`{prog} --help` lists the options)", file=sys.stderr)
        sys.exit(2)


class CodecCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True, **kwargs):
        parser_kwargs: dict = {"default_env": False, "prog": "codec"}
        if DEFAULTS.is_file():  # absent only when installed without the repository's conf/
            defaults = {"default_config_files": [str(DEFAULTS)]}
            if run:  # one parser per subcommand
                parser_kwargs.update({subcommand: defaults for subcommand in self.subcommands()})
            else:
                parser_kwargs.update(defaults)
        warnings.filterwarnings("ignore", message=".*configure_optimizers` will be overridden.*")
        # With a discriminator (manual optimization) Lightning warns at every step-interval checkpoint
        # that it holds the state after the step: so does every automatic-optimization checkpoint,
        # and a checkpoint at global_step N is meant to hold N codec steps (test_adversarial.py, resume).
        warnings.filterwarnings("ignore", message=".*manual optimization and every_n_train_steps.*")
        super().__init__(
            CodecModule,
            AudioDataModule,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs=parser_kwargs,
            parser_class=OneLineErrorParser,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run.name", type=str, default="run",
                            help="Run name: the run directory is <run.root>/<run.name>/version_N; the W&B group.")
        parser.add_argument("--run.root", type=str, default="runs",
                            help="Folder that holds run directories (--trainer.default_root_dir, when given, wins).")
        parser.add_argument("--run.wandb", type=bool, default=True,
                            help="Also log to W&B (offline unless WANDB_MODE is set).")
        parser.add_argument("--run.tags", type=list[str], default=[], help="W&B tags (ablation, sweep).")
        parser.add_argument("--run.checkpoint_every", type=int, default=500,
                            help="Training steps between checkpoints (last.ckpt is also written at the end).")
        parser.add_argument("--run.diagnostics", type=bool, default=True,
                            help="Add the diagnostics.* monitors and the run summary to the trainer's callbacks.")
        parser.add_lightning_class_args(ValidateAtStartAndEnd, "validation")
        for key, callback in DIAGNOSTICS.items():
            parser.add_lightning_class_args(callback, f"diagnostics.{key}")

    def instantiate_classes(self) -> None:
        self._check_segment_and_rates()
        try:
            super().instantiate_classes()
        except ValueError as error:  # a config class or the model rejected a value: name it, on one line
            print(f"{self._prog}: error: {one_line(_root_cause(error))}", file=sys.stderr)
            raise SystemExit(2) from error

    @property
    def _prog(self) -> str:
        return f"codec {self.subcommand}" if self.subcommand else "codec"

    def _check_segment_and_rates(self) -> None:
        """Strides whose hop does not divide the segment, and a model rate other than the data's, are
        config errors: say so now, not as a shape error (or silently wrong audio) mid-run."""
        model, data = self._get(self.config, "model"), self._get(self.config, "data")
        if model is None or data is None:
            return
        structure = model.get("structure")
        strides = (structure.get("strides") if structure is not None else None) or [2, 4, 5, 8]
        hop = math.prod(int(s) for s in strides)
        segment = data.get("sample_rate", 16000) * data.get("segment_seconds", 0.5)
        problem = None
        if abs(segment - round(segment)) > 1e-6 or round(segment) % hop:
            problem = (f"data.segment_seconds={data.get('segment_seconds')} at data.sample_rate={data.get('sample_rate')} "
                       f"is {segment:g} samples, not a multiple of the encoder hop {hop} "
                       f"(the product of model.structure.strides={list(strides)})")
        elif model.get("sample_rate") != data.get("sample_rate"):
            problem = (f"model.sample_rate={model.get('sample_rate')} differs from "
                       f"data.sample_rate={data.get('sample_rate')}")
        if problem:
            print(f"{self._prog}: error: {problem}", file=sys.stderr)
            raise SystemExit(2)

    def instantiate_trainer(self, **kwargs):
        run = self._get(self.config_init, "run")
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        root = trainer_config.get("default_root_dir") or run.root  # a Lightning user's first guess is honoured
        resume_dir = self._resume_directory()
        trainer_config["logger"] = _run_loggers(run, root, resume_dir, trainer_config.get("logger"))
        trainer_config["plugins"] = _with_atomic_checkpoints(trainer_config.get("plugins"))
        keys = self._parser(self.subcommand).callback_keys
        if not run.diagnostics:
            keys = [key for key in keys if not key.startswith("diagnostics.")]
        extra = [self._get(self.config_init, key) for key in keys] + [ResumeState()]
        configured = trainer_config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        wants_checkpoints = trainer_config.get("enable_checkpointing") is not False
        if wants_checkpoints and not any(isinstance(c, ModelCheckpoint) for c in configured + extra):
            # last.ckpt is refreshed every N steps and at the end (atomically: AtomicCheckpointIO).
            extra.append(ModelCheckpoint(every_n_train_steps=run.checkpoint_every, save_last=True))
        trainer = self._instantiate_trainer(trainer_config, extra)
        # DDP ranks on this machine share the run's CPUs (Lightning's own division is skipped
        # because codec/cli.py has already set OMP_NUM_THREADS).
        share_with_local_ranks(getattr(trainer.strategy, "num_processes", 1))
        return trainer

    def _resume_directory(self) -> Path | None:
        """The version_N directory of the checkpoint a fit resumes from, when it is one of ours."""
        if self.subcommand != "fit":
            return None
        ckpt_path = self._get(self.config, "ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return None
        return run_directory_of(ckpt_path)


def _root_cause(error: BaseException) -> str:
    """The innermost error's message (`raise ... from None` ends the chain)."""
    while True:
        inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        if inner is None:
            return str(error)
        error = inner


def _with_atomic_checkpoints(plugins) -> list:
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def _run_loggers(run, root: str, resume_dir: Path | None, user_logger) -> list[Logger]:
    """CSV always (the record reports read), W&B unless disabled, then any logger the config names.

    A resumed fit logs into the directory of the run it continues (and the same W&B run id)."""
    if resume_dir is not None:
        csv = RunCSVLogger(save_dir=resume_dir.parent.parent, name=resume_dir.parent.name,
                           version=int(resume_dir.name.split("_")[1]))
    else:
        csv = RunCSVLogger(save_dir=root, name=run.name)
    loggers: list[Logger] = [csv]
    if run.wandb and os.environ.get("WANDB_MODE", "offline") != "disabled":
        loggers.append(_wandb_logger(run, csv.log_dir, wandb_run_id(resume_dir) if resume_dir else None))
    if isinstance(user_logger, Logger):
        loggers.append(user_logger)
    elif isinstance(user_logger, list):
        loggers += [lg for lg in user_logger if isinstance(lg, Logger)]
    return loggers


def _wandb_logger(run, log_dir: str, resume_id: str | None = None) -> Logger:
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    resume = {"id": resume_id, "resume": "allow"} if resume_id else {}
    return WandbLogger(project="codec-lab", name=f"{run.name}/{Path(log_dir).name}", group=run.name,
                       tags=list(run.tags), save_dir=log_dir, **resume)
