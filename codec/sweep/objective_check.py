"""Is the objective a metric the trials will log? Checked by one tiny training run, before any trial.

A list of the metric names the module logs would go stale whenever a metric is added (and could not
know a user's own callbacks); the run itself cannot. So the base config with the sweep's overrides
trains one step with one validation batch in a temporary folder (no W&B, no checkpoint), and the
objective must be among the metrics it logged: what the pruner and the objective read at each
validation. About the cost of one training step, plus building the model.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import tempfile

from codec.sweep.config import Sweep, SweepFileError

DRY_RUN = ["--trainer.max_steps=1", "--trainer.val_check_interval=1", "--trainer.limit_val_batches=1",
           "--trainer.log_every_n_steps=1", "--trainer.enable_checkpointing=false",
           "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
           "--run.name=objective_check", "--run.wandb=false", "--diagnostics.summary.print_verdicts=false",
           "--diagnostics.examples.num_items=0"]


def logged_metrics(sweep: Sweep) -> set[str]:
    """Every metric name one step and one validation of the base config log."""
    from codec.cli import CodecCLI
    from codec.runs import read_metrics
    from codec.sweep.trial import base_args

    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    with tempfile.TemporaryDirectory(prefix="codec-objective-check-") as tmp, \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        quiet.setLevel(logging.WARNING)
        try:
            cli = CodecCLI(args=[*base_args(sweep), *DRY_RUN, f"--run.root={tmp}"], run=False)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        except (Exception, SystemExit) as e:
            printed = err.getvalue().strip().splitlines()  # jsonargparse prints its reason, then exits
            detail = printed[-1] if isinstance(e, SystemExit) and printed else f"{type(e).__name__}: {e}"
            raise SweepFileError(f"{sweep.path}: the base config does not train one step, so no trial "
                                 f"would: {detail}") from None
        finally:
            quiet.setLevel(level)
        names = set(cli.trainer.callback_metrics)
        csv_rows = read_metrics(cli.trainer.log_dir) if cli.trainer.log_dir else []
        names.update(key for row in csv_rows for key in row)
    return names - {"step", "epoch"}


def check_objective(sweep: Sweep) -> None:
    """Raises SweepFileError, one line naming the metric and the nearest logged names, when the
    objective is not among the metrics a trial logs."""
    names = logged_metrics(sweep)
    if sweep.metric in names:
        return
    close = difflib.get_close_matches(sweep.metric, sorted(names), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else \
        "validation logs " + ", ".join(sorted(n for n in names if n.startswith("val/audio/")))
    raise SweepFileError(f"{sweep.path}: objective metric {sweep.metric!r} is not logged by {sweep.base.name} "
                         f"(checked by one training step and one validation); {hint}")
