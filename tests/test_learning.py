"""A real training run on the embedded data: the codec learns, and keeps its codebooks alive.

About 300 steps of the shipped conf/waveform_l1.yaml (Euclidean lookup, waveform L1 dominant),
a few minutes on 2 cores. This is the suite's end-to-end run.
"""

import pytest

from codec.cli import CodecCLI
from codec.diagnostics import read_summary
from codec.diagnostics.replay import replay
from codec.runs import read_config, read_metrics, series

from helpers import CONF

STEPS = 300


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    CodecCLI(args=["fit", "-c", str(CONF / "waveform_l1.yaml"), f"--run.root={root}", "--run.wandb=false",
                   f"--trainer.max_steps={STEPS}", "--trainer.val_check_interval=25",
                   "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
    (run_dir,) = (root / "waveform_l1").glob("version_*")
    return run_dir


@pytest.fixture(scope="module")
def run(run_dir):
    return read_metrics(run_dir)


def test_a_run_that_learns_with_healthy_usage_gets_no_verdict(run_dir, run):
    # Every monitor at its shipped thresholds, past their grace and warm-up: silent on a healthy run,
    # and the rules replayed over its metrics.csv agree.
    summary = read_summary(run_dir)
    assert summary["status"] == "finished" and summary["verdicts"] == [], summary["verdicts"]
    assert replay(run, read_config(run_dir)) == []
    assert series(run, "train/codebook/q0/low_usage_share") and series(run, "train/health/rms_high_share")


def test_held_out_mel_distance_falls_at_least_20_percent(run):
    mel = series(run, "val/audio/mel_l1")
    assert len(mel) >= 5
    first, last = mel[0][1], mel[-1][1]
    assert last <= 0.8 * first, mel


def test_every_active_level_keeps_a_perplexity_of_at_least_5(run):
    last = {}
    for row in run:  # later rows overwrite earlier ones: the last validation's value per level
        last.update({k: v for k, v in row.items() if k.startswith("val/rvq/") and k.endswith("/perplexity")})
    assert len(last) == 8, sorted(last)
    assert min(last.values()) >= 5, last


def test_waveform_l1_config_reaches_positive_snr_and_keeps_amplitude(run):
    snr = series(run, "val/audio/snr_db")[-1][1]
    rms_ratio = series(run, "val/audio/rms_ratio")[-1][1]
    assert snr >= 0.5, snr
    assert rms_ratio >= 0.3, rms_ratio
