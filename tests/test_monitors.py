"""The diagnostic callbacks catch planted failures (F1, F2, F3, F4, F7) and stay quiet on healthy runs."""

import json
import math
import re

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

# Rules sized for runs of tens of steps: the same rules, a shorter grace and patience.
FAST_CODEBOOK = dict(every_n_steps=10, check_every_n_steps=5, grace_steps=5, patience_steps=10)
FAST_AMPLITUDE = ["--diagnostics.amplitude.warmup_steps=5", "--diagnostics.amplitude.patience_steps=10",
                  "--diagnostics.amplitude.check_every_n_steps=5"]
FAST_CLI = ["--diagnostics.codebook.every_n_steps=10", "--diagnostics.codebook.check_every_n_steps=5",
            "--diagnostics.codebook.grace_steps=5", "--diagnostics.codebook.patience_steps=10", *FAST_AMPLITUDE]


class PlantDeadFarCodebook(L.Callback):
    """Level 0's codebook far from the data (x100 the init scale), one code nearer than the rest."""

    def on_train_start(self, trainer, pl_module):
        level = pl_module.quantizer.levels[0]
        level.codebook.fill_(100.0)
        level.codebook[0] = 50.0
        level.embed_sum.copy_(level.codebook * level.cluster_size[:, None])  # the EMA state agrees


def test_codebook_monitor_names_an_active_level_stuck_on_one_code_and_a_drifted_codebook(tmp_path):
    torch.manual_seed(0)
    planted = CodebookMonitor(every_n_steps=4, min_trained_steps=1)
    model = ToyVQClassifier(init="random", dead_code_threshold=0.0)  # no re-seeding to rescue it
    trainer(tmp_path / "planted", [PlantDeadFarCodebook(), planted]).fit(model, *loaders())
    lines = [v.line() for v in planted.verdicts]
    assert any(line.startswith("F2") and "Q0 used 1/8 codes" in line for line in lines), lines
    assert any("Q0 codes in use span" in line for line in lines), lines
    # Level 1 inherits the far-off residual and is flagged too; every flag is raised once, at the
    # first window, not again at steps 8 and 12.
    assert {v.step for v in planted.verdicts if v.rule != "usage.validation"} == {4}

    torch.manual_seed(0)
    healthy = CodebookMonitor(every_n_steps=4, min_trained_steps=1)
    trainer(tmp_path / "healthy", [healthy]).fit(ToyVQClassifier(), *loaders())
    assert healthy.verdicts == []
    rows = read_metrics(next((tmp_path / "healthy").rglob("metrics.csv")).parent)
    used = series(rows, "train/codebook/q0/window_codes_used")
    assert [step for step, _ in used] == [4, 8, 12]  # one report per window, filed at the step it ends
    assert all(value >= 2 for _, value in used)


class CollapseEachStep(L.Callback):
    """From step `onset`, every row of a step gets the same quantizer input (a different one each
    step): per step one code, over a window many. The phase_b collapse the window union missed."""

    def __init__(self, onset: int):
        self.onset, self.handle = onset, None

    def on_train_start(self, trainer, pl_module):
        def squash(module, args):
            if module.training and trainer.global_step >= self.onset:
                z = args[0]
                return (z.mean(dim=(0, 2), keepdim=True) + 3.0 * torch.randn(1, z.shape[1], 1)).expand_as(z).clone()
            return None
        self.handle = pl_module.quantizer.register_forward_pre_hook(squash)

    def on_train_end(self, trainer, pl_module):
        self.handle.remove()


def test_per_step_collapse_is_named_within_patience_although_each_window_uses_many_codes(tmp_path):
    torch.manual_seed(0)
    monitor = CodebookMonitor(**FAST_CODEBOOK)
    run = trainer(tmp_path, [CollapseEachStep(onset=20), monitor], max_steps=60, val_every=1000)
    run.fit(ToyVQClassifier(codebook_size=16), *loaders())
    per_step = [v for v in monitor.verdicts if v.rule == "usage.per_step"]
    assert per_step and all(20 < v.step <= 20 + 10 + 5 for v in per_step), monitor.verdicts
    assert not any(v.rule == "usage.window" for v in monitor.verdicts)  # the union never looked wrong
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")).parent)
    used = [v for s, v in series(rows, "train/codebook/q0/window_codes_used") if s > 30]
    assert min(used) > 4  # many codes per window
    shares = series(rows, "train/codebook/q0/low_usage_share")
    assert shares[0][1] < 0.1 and shares[-1][1] > 0.8


def test_a_healthy_classifier_with_one_frame_per_item_raises_nothing(tmp_path):
    torch.manual_seed(0)
    callbacks = [CodebookMonitor(**FAST_CODEBOOK), UsageConsistencyMonitor()]
    trainer(tmp_path, callbacks, max_steps=80, val_every=20).fit(ToyVQClassifier(), *loaders())
    assert [v for cb in callbacks for v in cb.verdicts] == []


def test_a_progressive_schedule_raises_no_f1_at_its_activations(tmp_path):
    # A level every 15 steps, windows of 10: windows that started before an activation see a level
    # that used no code, which is not a failure; the same schedule of phase_2a raised F1 at every activation.
    cli = CodecCLI(args=["-c", str(CONF / "waveform_l1.yaml"), *TINY, f"--run.root={tmp_path}",
                         "--trainer.max_steps=80", "--trainer.val_check_interval=10", "--data.train_items=64",
                         "--trainer.log_every_n_steps=5", "--trainer.callbacks+=codec.callbacks.ProgressiveRVQ",
                         "--trainer.callbacks.every=15", *FAST_CLI], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    summary = read_summary(next(tmp_path.rglob("summary.json")).parent)
    assert summary["status"] == "finished" and summary["verdicts"] == [], summary["verdicts"]
    rows = read_metrics(next(tmp_path.rglob("metrics.csv")).parent)
    assert series(rows, "train/codebook/q3/active_since")[0][1] == 46  # first trained in step 46


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


def test_inspect_and_the_live_monitor_agree_on_the_same_checkpoint(tmp_path):
    from codec.inspection import inspect_checkpoint

    cli = CodecCLI(args=["-c", str(CONF / "waveform_l1.yaml"), *TINY, f"--run.root={tmp_path}",
                         "--trainer.max_steps=10", "--trainer.val_check_interval=10", "--run.checkpoint_every=10",
                         "--diagnostics.codebook.every_n_steps=10", "--diagnostics.codebook.min_trained_steps=5",
                         "--model.quantizer.dead_code_threshold=0", "--model.quantizer.init=random"], run=False)
    cli.trainer.callbacks.insert(0, PlantDeadFarCodebook())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    monitor = next(cb for cb in cli.trainer.callbacks if isinstance(cb, CodebookMonitor))
    live = {(v.failure, v.rule, v.subject) for v in monitor.verdicts
            if v.step == 10 and v.rule.startswith("codebook.")}
    assert ("F2", "codebook.drift", "q0") in live
    checkpoint = next(tmp_path.rglob("last.ckpt"))  # saved at step 10, after the monitor's report there
    report = inspect_checkpoint(checkpoint)
    assert report.rules_from is not None and report.rules["min_trained_steps"] == 5  # the run's own thresholds
    assert {(v.failure, v.rule, v.subject) for v in report.verdicts} == live


# ------------------------------------------------------------------------- F3/F4


class ShrinkOutput(L.Callback):
    """A model whose output is scaled down step by step (the reports' F3, in fast motion)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with torch.no_grad():
            pl_module.codec.out_proj.weight.mul_(0.5)
            pl_module.codec.out_proj.bias.mul_(0.5)


class GrowOutput(L.Callback):
    """At step `onset` the output jumps to 20x its level and stays there (the learning rate drops to 0,
    so training cannot undo it): an explosion between two validations."""

    def __init__(self, onset: int):
        self.onset = onset

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.onset:
            with torch.no_grad():
                pl_module.codec.out_proj.weight.mul_(20.0)
                pl_module.codec.out_proj.bias.mul_(20.0)
            for group in trainer.optimizers[0].param_groups:
                group["lr"] = 0.0


class OffsetOutput(L.Callback):
    """out_proj's bias at 0.5 and the learning rate at 0 (so training cannot undo it): the output's
    energy is a constant offset."""

    def on_train_start(self, trainer, pl_module):
        with torch.no_grad():
            pl_module.codec.out_proj.bias.fill_(0.5)
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = 0.0


def fit_with(tmp_path, phase: str, *extra_callbacks, overrides=(), ckpt_path=None):
    cli = CodecCLI(args=["-c", str(CONF / f"{phase}.yaml"), *TINY, f"--run.root={tmp_path}",
                         "--trainer.max_steps=30", "--trainer.val_check_interval=2",
                         "--diagnostics.amplitude.patience=2", *overrides], run=False)
    cli.trainer.callbacks[:0] = list(extra_callbacks)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
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
    assert summary["stopped_by"]["rule"] == "amplitude.collapse"
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


def test_a_run_resumed_after_the_monitor_stopped_it_is_not_stopped_again_by_the_same_finding(tmp_path):
    trainer_, monitor = fit_with(tmp_path, "phase_a", ShrinkOutput())
    stopped = monitor.collapsed_at_step
    assert trainer_.global_step == stopped
    ckpt = next(tmp_path.rglob("last.ckpt"))
    with pytest.warns(UserWarning, match=f"resuming a run the amplitude monitor stopped at step {stopped}"):
        resumed, again = fit_with(tmp_path, "phase_a", ShrinkOutput(), overrides=[f"--trainer.max_steps={stopped + 6}"],
                                  ckpt_path=ckpt)
    assert resumed.global_step == stopped + 6  # the user chose to go on
    assert [v.rule for v in again.verdicts].count("amplitude.collapse") == 1  # raised once, in the first fit


def test_an_explosion_between_validations_is_named_from_training_steps_and_stops_the_run(tmp_path):
    # Validations 100 steps apart would name it late; the per-step rule names it about patience_steps after.
    trainer_, monitor = fit_with(tmp_path, "waveform_l1", GrowOutput(onset=20),
                                 overrides=["--trainer.max_steps=100", "--trainer.val_check_interval=100", *FAST_CLI])
    (verdict,) = monitor.verdicts  # named once: at the first reading above 10, within one check of the jump
    assert verdict.rule == "amplitude.explosion" and verdict.subject == "train/audio/rms_ratio"
    assert 20 < verdict.step <= 20 + 5
    # A single extreme reading does not end a run; the same level for most of patience_steps does.
    assert monitor.stop_verdict == verdict and verdict.step < trainer_.global_step <= 20 + 10 + 5


def test_a_dc_offset_is_named_as_such(tmp_path):
    _, monitor = fit_with(tmp_path, "waveform_l1", OffsetOutput(),
                          overrides=["--trainer.max_steps=40", "--trainer.val_check_interval=10",
                                     "--diagnostics.amplitude.mode=warn", *FAST_CLI])
    dc = [v for v in monitor.verdicts if v.rule == "amplitude.dc_offset"]
    assert dc and dc[0].step <= 5 + 10 + 5 and "constant offset" in dc[0].message
    assert not any(v.rule == "amplitude.explosion" for v in monitor.verdicts)  # DC is not loudness


def test_a_diverging_run_is_named_with_its_learning_rate(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        fit_with(tmp_path, "waveform_l1", overrides=["--optimizer.init_args.lr=1e4", "--trainer.max_steps=200",
                                                     "--trainer.val_check_interval=100"])
    summary = read_summary(next(tmp_path.rglob("summary.json")).parent)
    assert summary["status"] == "failed"
    (verdict,) = [v for v in summary["verdicts"] if v["rule"] == "training.non_finite"]
    # The learning rate the optimizer had when it failed (1e4, part way up the recipe's warm-up).
    assert re.search(r"at learning rate \d", verdict["message"]) and "train/loss/total" in verdict["message"]


def test_warn_mode_flags_but_keeps_training(tmp_path):
    trainer_, monitor = fit_with(tmp_path, "phase_1", ShrinkOutput(),
                                 overrides=["--diagnostics.amplitude.mode=warn", "--trainer.max_steps=14"])
    assert failures(monitor) == ["F3"]  # phase_1's simple structure: no F4 verdict
    assert trainer_.global_step == 14


def test_healthy_short_run_is_not_flagged(tmp_path):
    # The amplitude rules at a short patience; this tiny codec's usage (16 codes, 4 channels) is not the point.
    trainer_, monitor = fit_with(tmp_path, "waveform_l1", overrides=["--trainer.max_steps=60", *FAST_AMPLITUDE])
    assert trainer_.global_step == 60 and monitor.collapsed_at_step is None
    assert all(r > monitor.threshold for _, r in monitor.history)
    summary = json.loads(next(tmp_path.rglob("summary.json")).read_text())
    assert summary["status"] == "finished" and summary["verdicts"] == [] and not summary["collapsed"]
    assert math.isfinite(summary["final"]["val/audio/rms_ratio"])


def test_replaying_the_rules_over_metrics_csv_reaches_the_live_verdicts(tmp_path):
    import yaml

    from codec.diagnostics.replay import replay

    fit_with(tmp_path, "phase_a", GrowOutput(onset=30),
             overrides=["--trainer.max_steps=80", "--trainer.val_check_interval=10", "--diagnostics.amplitude.mode=warn",
                        "--optimizer.init_args.lr=0.05", *FAST_CLI])
    run_dir = next(tmp_path.rglob("summary.json")).parent
    live = [(v["step"], v["failure"], v["rule"], v["subject"]) for v in read_summary(run_dir)["verdicts"]]
    replayed = replay(read_metrics(run_dir), yaml.safe_load((run_dir / "config.yaml").read_text()))
    assert len(live) >= 3 and sorted(live) == sorted((v.step, v.failure, v.rule, v.subject) for v in replayed)


def test_diagnostics_can_be_left_out_and_bad_settings_are_rejected(tmp_path):
    cli = CodecCLI(args=["-c", str(CONF / "phase_1.yaml"), *TINY, "--run.diagnostics=false"], run=False)
    assert not any(isinstance(cb, (AmplitudeMonitor, CodebookMonitor, RunSummary)) for cb in cli.trainer.callbacks)
    with pytest.raises(ValueError, match="mode must be one of"):
        AmplitudeMonitor(mode="halt")
    with pytest.raises(ValueError, match="threshold < 1 < high"):
        AmplitudeMonitor(high=0.5)


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


def test_a_run_stopped_by_sigterm_is_recorded_as_interrupted(tmp_path):
    import os
    import signal

    class Terminate(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # what `kill PID` or a cluster's pre-emption sends

    with pytest.raises(SystemExit):
        fit_with(tmp_path, "phase_1", Terminate())
    summary = read_summary(next(tmp_path.rglob("summary.json")).parent)
    assert summary["status"] == "interrupted" and summary["steps"] == 3


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
    verdict = Verdict("F2", 250, "Q0 has 900/1024 dead codes", "re-seed", "codebook.dead_codes", "q0")
    with pytest.warns(UserWarning, match="F2 at step 250"):
        monitor.record([verdict])
    monitor.record([verdict])
    assert monitor.verdicts == [verdict]
    resumed = CodebookMonitor()
    resumed.load_state_dict(monitor.state_dict())
    resumed.record([Verdict("F2", 500, "again", "re-seed", "codebook.dead_codes", "q0")])
    assert resumed.verdicts == [verdict]
