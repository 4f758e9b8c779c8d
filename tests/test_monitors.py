"""The diagnostic callbacks catch planted failures (F1, F2, F3, F4, F7) and stay quiet on healthy runs."""

import json
import math

import lightning as L
import pytest
import torch

from codec.callbacks import (
    AmplitudeMonitor,
    CodebookMonitor,
    ProgressiveRVQ,
    RunSummary,
    UsageConsistencyMonitor,
    Verdict,
    read_summary,
)
from codec.callbacks.usage_consistency import js_divergence_bits
from codec.cli import CodecCLI
from codec.compare import phase_table
from codec.runs import load_run, read_metrics, series

from helpers import CONF, TINY
from toy_vq import ToyVQClassifier, loaders, trainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def failures(callback) -> list[str]:
    return [v.failure for v in callback.verdicts]


# ------------------------------------------------------------------------- F7


def test_train_vs_eval_usage_flags_a_classifier_whose_eval_codes_collapse(tmp_path):
    torch.manual_seed(0)
    planted = UsageConsistencyMonitor(max_batches=2)
    model = ToyVQClassifier(bn_momentum=0.0)  # running stats never move: eval mode sees other inputs
    trainer(tmp_path / "planted", [planted]).fit(model, *loaders())
    assert "F7" in failures(planted)
    collapsed = planted.compare(model, [next(iter(loaders()[1]))])[("", 0)]
    assert collapsed["perplexity_eval_mode"] < 0.25 * collapsed["perplexity_train_mode"]
    assert collapsed["agreement"] < 0.5 and collapsed["js_divergence_bits"] > 0.3

    torch.manual_seed(0)
    healthy = UsageConsistencyMonitor(max_batches=2)
    model = ToyVQClassifier(bn_momentum=None)  # cumulative average: running stats match the data
    trainer(tmp_path / "healthy", [healthy]).fit(model, *loaders())
    assert failures(healthy) == []
    rows = read_metrics(next((tmp_path / "healthy").rglob("metrics.csv")).parent)
    agreement = series(rows, "val/usage/q0/agreement")
    assert len(agreement) == 3 and all(value > 0.5 for _, value in agreement)


def test_train_mode_pass_changes_no_buffer_and_no_random_stream():
    torch.manual_seed(0)
    model = ToyVQClassifier(bn_momentum=0.1)
    model.train()
    x, _ = next(iter(loaders()[0]))
    model(x)  # k-means init, BatchNorm statistics
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    UsageConsistencyMonitor().compare(model, [(x, None)])
    assert torch.equal(torch.get_rng_state(), rng)
    assert not model.training and not model.encoder[1].training  # modes restored
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_js_divergence_is_zero_for_equal_and_one_for_disjoint_histograms():
    a, b = torch.tensor([3, 1, 0, 0]), torch.tensor([0, 0, 2, 2])
    assert js_divergence_bits(a, a * 5) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence_bits(a, b) == pytest.approx(1.0)


# ------------------------------------------------------------------------- F1/F2


class PlantDeadFarCodebook(L.Callback):
    """Level 0's codebook far from the data (x100 the init scale), one code nearer than the rest."""

    def on_train_start(self, trainer, pl_module):
        level = pl_module.quantizer.levels[0]
        level.codebook.fill_(100.0)
        level.codebook[0] = 50.0
        level.embed_sum.copy_(level.codebook * level.cluster_size[:, None])  # the EMA state agrees


def test_codebook_monitor_names_an_active_level_stuck_on_one_code_and_a_drifted_codebook(tmp_path):
    torch.manual_seed(0)
    planted = CodebookMonitor(every_n_steps=4)
    model = ToyVQClassifier(init="random", dead_code_threshold=0.0)  # no re-seeding to rescue it
    trainer(tmp_path / "planted", [PlantDeadFarCodebook(), planted]).fit(model, *loaders())
    lines = [v.line() for v in planted.verdicts]
    assert any(line.startswith("F2") and "Q0 used 1/8 codes" in line for line in lines), lines
    assert any("Q0 codebook values span" in line for line in lines), lines
    # Level 1 inherits the far-off residual and is flagged too; every flag is raised once, at the
    # first window, not again at steps 8 and 12.
    assert {v.step for v in planted.verdicts} == {4}

    torch.manual_seed(0)
    healthy = CodebookMonitor(every_n_steps=4)
    trainer(tmp_path / "healthy", [healthy]).fit(ToyVQClassifier(), *loaders())
    assert healthy.verdicts == []
    rows = read_metrics(next((tmp_path / "healthy").rglob("metrics.csv")).parent)
    used = series(rows, "train/codebook/q0/window_codes_used")
    assert [step for step, _ in used] == [3, 7, 11]  # one report per window, on the window's last step
    assert all(value >= 2 for _, value in used)


def test_progressive_buffer_and_callback_agree_at_every_logged_step(tmp_path):
    CodecCLI(args=["fit", "-c", str(CONF / "phase_1.yaml"), *TINY, f"--run.root={tmp_path}",
                   "--trainer.max_steps=6", "--trainer.val_check_interval=6",
                   "--trainer.callbacks+=codec.callbacks.ProgressiveRVQ", "--trainer.callbacks.every=2"])
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")).parent)
    logged = series(rows, "train/rvq/num_active")
    assert [step for step, _ in logged] == list(range(6))
    assert all(value == ProgressiveRVQ(every=2).num_active_at(step, 4) for step, value in logged)
    saved = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=True)
    assert int(saved["state_dict"]["codec.quantizer.num_active"]) == 4  # 1 + 6 // 2, the schedule at step 6


# ------------------------------------------------------------------------- F3/F4


class ShrinkOutput(L.Callback):
    """A model whose output is scaled down step by step (the reports' F3, in fast motion)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with torch.no_grad():
            pl_module.codec.out_proj.weight.mul_(0.5)
            pl_module.codec.out_proj.bias.mul_(0.5)


def fit_with(tmp_path, phase: str, *extra_callbacks, overrides=()):
    cli = CodecCLI(args=["-c", str(CONF / f"{phase}.yaml"), *TINY, f"--run.root={tmp_path}",
                         "--trainer.max_steps=30", "--trainer.val_check_interval=2",
                         "--diagnostics.amplitude.patience=2", *overrides], run=False)
    cli.trainer.callbacks[:0] = list(extra_callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    monitor = next(cb for cb in cli.trainer.callbacks if isinstance(cb, AmplitudeMonitor))
    return cli.trainer, monitor


def test_planted_amplitude_collapse_is_declared_within_patience_and_stops_the_run(tmp_path, capsys):
    trainer_, monitor = fit_with(tmp_path, "phase_a", ShrinkOutput())
    steps, ratios = zip(*monitor.history, strict=True)
    first_below = next(i for i, r in enumerate(ratios) if r < monitor.threshold)
    assert monitor.collapsed_at_step == steps[first_below + 1]  # the second low validation in a row
    assert trainer_.global_step == monitor.collapsed_at_step < 30  # stopped there
    assert failures(monitor) == ["F3", "F4"]  # phase_a has final_conv + post_scale between RVQ and out_proj
    assert "out_proj" in monitor.verdicts[1].message

    run_dir = next(tmp_path.rglob("summary.json")).parent
    summary = read_summary(run_dir)
    assert summary["status"] == "stopped" and summary["collapsed"] is True
    assert summary["failures"] == ["F3", "F4"] and summary["steps"] == monitor.collapsed_at_step
    assert "RMS ratio" in summary["verdicts"][0]["message"]
    assert "phase_b" in summary["verdicts"][0]["remedy"]
    rows = read_metrics(run_dir)
    assert series(rows, "val/health/amplitude_collapsed")[-1][1] == 1.0
    norms = [v for _, v in series(rows, "train/params/out_proj/weight_norm")]
    assert norms[-1] < 0.1 * norms[0]  # the evidence of F4 is logged too
    step = monitor.collapsed_at_step
    assert f"| F3@{step} F4@{step} |" in phase_table([load_run(run_dir)])[0]  # the demo's table
    printed = capsys.readouterr().out
    assert f"Run stopped at step {monitor.collapsed_at_step}" in printed and "F3 at step" in printed


def test_warn_mode_flags_but_keeps_training(tmp_path):
    trainer_, monitor = fit_with(tmp_path, "phase_1", ShrinkOutput(),
                                 overrides=["--diagnostics.amplitude.mode=warn", "--trainer.max_steps=14"])
    assert failures(monitor) == ["F3"]  # phase_1's simple structure: no F4 verdict
    assert trainer_.global_step == 14


def test_healthy_short_run_is_not_flagged(tmp_path):
    trainer_, monitor = fit_with(tmp_path, "phase_1", overrides=["--trainer.max_steps=8"])
    assert trainer_.global_step == 8 and monitor.collapsed_at_step is None
    assert all(r > monitor.threshold for _, r in monitor.history)
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert summary["status"] == "finished" and summary["verdicts"] == [] and not summary["collapsed"]
    assert math.isfinite(summary["final"]["val/audio/rms_ratio"])


def test_diagnostics_can_be_left_out_and_bad_settings_are_rejected(tmp_path):
    cli = CodecCLI(args=["-c", str(CONF / "phase_1.yaml"), *TINY, "--run.diagnostics=false"], run=False)
    assert not any(isinstance(cb, (AmplitudeMonitor, CodebookMonitor, RunSummary)) for cb in cli.trainer.callbacks)
    with pytest.raises(ValueError, match="mode must be one of"):
        AmplitudeMonitor(mode="halt")


def test_summary_records_a_failed_run_with_its_error(tmp_path):
    class Boom(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:
                raise RuntimeError("planted failure")

    with pytest.raises(RuntimeError, match="planted failure"):
        fit_with(tmp_path, "phase_1", Boom())
    summary = read_summary(next(tmp_path.rglob("summary.json")).parent)
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: planted failure"
    assert summary["steps"] == 2


def test_usage_histograms_reach_an_offline_wandb_run(tmp_path, monkeypatch):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    torch.manual_seed(0)
    run = trainer(tmp_path, [CodebookMonitor(every_n_steps=4)], max_steps=4, val_every=4)
    logger = WandbLogger(project="codec-lab-test", save_dir=str(tmp_path), name="histograms")
    run.loggers.append(logger)
    # What reaches the W&B run (its .wandb file is a block-framed binary log: a key can be split
    # across blocks, so searching its bytes is not a reliable check).
    sent, log = [], logger.experiment.log
    monkeypatch.setattr(logger.experiment, "log", lambda data, *a, **k: (sent.append(data), log(data, *a, **k))[1])
    run.fit(ToyVQClassifier(), *loaders())
    logger.experiment.finish()
    histograms = [d["train/codebook/q0/usage"] for d in sent if "train/codebook/q0/usage" in d]
    assert len(histograms) == 1 and isinstance(histograms[0], wandb.Histogram)
    assert sum(histograms[0].histogram) == 4 * 32  # 4 steps x 32 items, one frame each


def test_a_verdict_is_raised_once_per_key_and_a_resumed_monitor_remembers_it():
    monitor = CodebookMonitor()
    verdict = Verdict("F2", 250, "Q0 has 900/1024 dead codes", "re-seed")
    with pytest.warns(UserWarning, match="F2 at step 250"):
        monitor.raise_once(("dead", "", 0), verdict)
    monitor.raise_once(("dead", "", 0), verdict)
    assert monitor.verdicts == [verdict]
    resumed = CodebookMonitor()
    resumed.load_state_dict(monitor.state_dict())
    resumed.raise_once(("dead", "", 0), Verdict("F2", 500, "again", "re-seed"))
    assert resumed.verdicts == [verdict]
