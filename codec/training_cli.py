"""The LightningCLI behind `codec fit` / `lightning fit`: defaults, run directories, loggers, diagnostics.

Every fit writes a run directory `<run.root>/<run.name>/version_N/` holding the
resolved `config.yaml`, `metrics.csv` (the CSV logger is always on),
`summary.json` and `checkpoints/`; W&B joins in offline mode unless WANDB_MODE
says otherwise, or is left out with `--run.wandb=false`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger

from codec.callbacks import AmplitudeMonitor, CodebookMonitor, RunSummary, UsageConsistencyMonitor
from codec.callbacks.audio_examples import AudioExamples
from codec.data import AudioDataModule
from codec.module import CodecModule

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


class CodecCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True, **kwargs):
        parser_kwargs: dict = {"default_env": False}
        if DEFAULTS.is_file():  # absent only when installed without the repository's conf/
            defaults = {"default_config_files": [str(DEFAULTS)]}
            if run:  # one parser per subcommand
                parser_kwargs.update({subcommand: defaults for subcommand in self.subcommands()})
            else:
                parser_kwargs.update(defaults)
        warnings.filterwarnings("ignore", message=".*configure_optimizers` will be overridden.*")
        super().__init__(
            CodecModule,
            AudioDataModule,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs=parser_kwargs,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--run.name", type=str, default="run",
                            help="Run name: the run directory is <run.root>/<run.name>/version_N; the W&B group.")
        parser.add_argument("--run.root", type=str, default="runs", help="Folder that holds run directories.")
        parser.add_argument("--run.wandb", type=bool, default=True,
                            help="Also log to W&B (offline unless WANDB_MODE is set).")
        parser.add_argument("--run.tags", type=list[str], default=[], help="W&B tags (ablation, sweep).")
        parser.add_argument("--run.checkpoint_every", type=int, default=500,
                            help="Training steps between checkpoints (last.ckpt is also written at the end).")
        parser.add_argument("--run.diagnostics", type=bool, default=True,
                            help="Add the diagnostics.* monitors and the run summary to the trainer's callbacks.")
        for key, callback in DIAGNOSTICS.items():
            parser.add_lightning_class_args(callback, f"diagnostics.{key}")

    def instantiate_trainer(self, **kwargs):
        run = self._get(self.config_init, "run")
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        trainer_config["logger"] = _run_loggers(run, trainer_config.get("logger"))
        keys = self._parser(self.subcommand).callback_keys
        if not run.diagnostics:
            keys = [key for key in keys if not key.startswith("diagnostics.")]
        extra = [self._get(self.config_init, key) for key in keys]
        configured = trainer_config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        wants_checkpoints = trainer_config.get("enable_checkpointing") is not False
        if wants_checkpoints and not any(isinstance(c, ModelCheckpoint) for c in configured + extra):
            # Lightning writes checkpoints atomically; last.ckpt is refreshed every N steps and at the end.
            extra.append(ModelCheckpoint(every_n_train_steps=run.checkpoint_every, save_last=True))
        return self._instantiate_trainer(trainer_config, extra)


def _run_loggers(run, user_logger) -> list[Logger]:
    """CSV always (the record reports read), W&B unless disabled, then any logger the config names."""
    loggers: list[Logger] = [CSVLogger(save_dir=run.root, name=run.name)]
    if run.wandb and os.environ.get("WANDB_MODE", "offline") != "disabled":
        loggers.append(_wandb_logger(run, loggers[0].log_dir))
    if isinstance(user_logger, Logger):
        loggers.append(user_logger)
    elif isinstance(user_logger, list):
        loggers += [lg for lg in user_logger if isinstance(lg, Logger)]
    return loggers


def _wandb_logger(run, log_dir: str) -> Logger:
    from lightning.pytorch.loggers import WandbLogger

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project="codec-lab", name=f"{run.name}/{Path(log_dir).name}", group=run.name,
                       tags=list(run.tags), save_dir=log_dir)
