"""The LightningCLI path: phase configs, overrides, run directories, checkpoints, encode/decode (F1, F4)."""

import copy
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from codec.callbacks import ProgressiveRVQ
from codec.cli import CodecCLI, main
from codec.report import read_metrics

from helpers import CONF, TINY

PHASES = ["phase_1", "phase_2a", "phase_a", "phase_a_v2", "phase_b"]

# The loss column of the phase table in failure-modes.md (RVQ losses are always on), on top of the
# shared recipe's mel and loudness losses (conf/defaults.yaml, issue 10).
RECIPE = {"mel", "loudness"}
PHASE_LOSSES = {
    "phase_1": RECIPE | {"stft", "l1"},
    "phase_2a": RECIPE | {"stft", "l1", "frame_rms"},
    "phase_a": RECIPE | {"stft", "l1", "frame_rms", "multiband_rms"},
    "phase_a_v2": RECIPE | {"stft", "l1", "frame_rms", "multiband_rms", "abs_rms", "scale_anchor", "norm_reg"},
    "phase_b": RECIPE | {"stft", "l1"},
}


def parse(phase: str, *overrides: str) -> CodecCLI:
    return CodecCLI(args=["-c", str(CONF / f"{phase}.yaml"), *overrides], run=False)


def fit(tmp_path: Path, phase: str, *overrides: str) -> Path:
    CodecCLI(args=["fit", "-c", str(CONF / f"{phase}.yaml"), *TINY, f"--run.root={tmp_path}", *overrides])
    (run_dir,) = sorted((tmp_path / phase).glob("version_*"))[-1:]
    return run_dir


@pytest.mark.parametrize("phase", PHASES)
def test_phase_config_builds_what_the_phase_table_says(phase):
    cli = parse(phase)
    model = cli.model
    assert set(model.reconstruction.active_losses) == PHASE_LOSSES[phase]
    normalization = "l2" if phase == "phase_b" else "zscore"
    assert model.quantizer.normalization == normalization
    in_phase_a = phase in ("phase_a", "phase_a_v2")
    assert (model.codec.final_conv is not None) == in_phase_a
    assert (model.quantizer.post_scale is not None) == in_phase_a
    if in_phase_a:
        assert torch.equal(model.codec.final_conv.weight.squeeze(-1), torch.eye(64))  # identity init
    weight_decay = cli.config["optimizer"]["init_args"]["weight_decay"]
    assert (weight_decay == 0) == in_phase_a
    progressive = [c for c in (cli.config_init["trainer"]["callbacks"] or []) if isinstance(c, ProgressiveRVQ)]
    assert bool(progressive) == (phase in ("phase_2a", "phase_a", "phase_a_v2"))


@pytest.mark.parametrize("phase", PHASES)
def test_every_phase_trains_a_few_steps_and_writes_a_run_directory(tmp_path, phase):
    run_dir = fit(tmp_path, phase, "--trainer.max_steps=3", "--trainer.val_check_interval=3")
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["run"]["name"] == phase and config["trainer"]["max_steps"] == 3
    rows = read_metrics(run_dir)
    logged = set().union(*rows)
    for name in PHASE_LOSSES[phase] | {"vq_commit", "total"}:
        assert f"train/loss/{name}" in logged
    assert {"val/audio/snr_db", "val/audio/si_sdr_db", "val/audio/mel_l1", "val/audio/rms_ratio"} <= logged


def test_unknown_key_is_rejected_by_name(capsys):
    with pytest.raises(SystemExit):
        parse("phase_b", "--model.quantizer.normalisation=zscore")
    assert "normalisation" in capsys.readouterr().err


def test_bad_value_is_rejected_by_name():
    with pytest.raises(ValueError, match="'batchnorm'"):
        parse("phase_b", "--model.quantizer.normalization=batchnorm")


def test_command_line_overrides_any_key():
    cli = parse("phase_b", "--model.quantizer.normalization=zscore", "--model.losses.l1=7")
    assert cli.model.quantizer.normalization == "zscore"
    assert cli.model.loss_config.l1 == 7


def test_print_config_shows_the_merged_config(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(CONF / "phase_b.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["quantizer"]["normalization"] == "l2"
    assert printed["trainer"]["max_steps"] == 3000  # from conf/defaults.yaml


def test_resume_continues_step_levels_ema_and_optimizer(tmp_path):
    """Stop at step 8 of a progressive run, resume: everything continues from the checkpoint."""
    progressive = ["--trainer.callbacks+=codec.callbacks.ProgressiveRVQ", "--trainer.callbacks.every=3"]
    run_dir = fit(tmp_path, "phase_1", "--trainer.max_steps=8", "--trainer.val_check_interval=8", *progressive)
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)  # weights_only loads it
    assert saved["global_step"] == 8
    assert int(saved["state_dict"]["codec.quantizer.num_active"]) == 3  # 1 + 8 // 3

    seen = {}

    class Capture(ProgressiveRVQ):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step
            seen["num_active"] = int(pl_module.quantizer.num_active)
            seen["state"] = {k: v.clone() for k, v in pl_module.state_dict().items()}
            seen["optim"] = copy.deepcopy(trainer.optimizers[0].state_dict())  # live tensors otherwise
            super().on_train_start(trainer, pl_module)

    cli = CodecCLI(args=["-c", str(CONF / "phase_1.yaml"), *TINY, f"--run.root={tmp_path}",
                         "--trainer.max_steps=9", "--trainer.val_check_interval=9"], run=False)
    cli.trainer.callbacks.append(Capture(every=3))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt_path))
    assert seen["step"] == 8 and seen["num_active"] == 3
    for key in ("codec.quantizer.levels.0.codebook", "codec.quantizer.levels.0.cluster_size",
                "codec.quantizer.levels.2.embed_sum", "codec.quantizer.levels.0.initialized"):
        assert torch.equal(seen["state"][key], saved["state_dict"][key]), key
    exp_avg = saved["optimizer_states"][0]["state"][0]["exp_avg"]
    assert torch.equal(seen["optim"]["state"][0]["exp_avg"], exp_avg)
    assert cli.trainer.global_step == 9  # step 8 trained 3 levels; the buffer now names step 9's: 1 + 9 // 3
    assert int(cli.model.quantizer.num_active) == 4


def test_encode_decode_use_the_checkpoints_own_levels(tmp_path):
    run_dir = fit(tmp_path, "phase_1", "--trainer.max_steps=5", "--trainer.val_check_interval=5",
                  "--trainer.callbacks+=codec.callbacks.ProgressiveRVQ", "--trainer.callbacks.every=2")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    wav, codes, out = tmp_path / "in.wav", tmp_path / "in.codes.pt", tmp_path / "out.wav"
    t = np.arange(16000 * 2 // 5) / 16000
    sf.write(wav, 0.1 * np.sin(2 * np.pi * 220 * t), 16000)
    with pytest.raises(SystemExit) as done:
        main(["encode", str(ckpt), str(wav), str(codes)])
    assert done.value.code == 0
    payload = torch.load(codes, weights_only=True)
    # Saved at global_step 5: 1 + 5 // 2 = 3 levels (the third trained at step 4), not the configured 4.
    assert payload["codes"].shape[1] == 3
    with pytest.raises(SystemExit):
        main(["decode", str(ckpt), str(codes), str(out)])
    audio, rate = sf.read(out)
    assert rate == 16000 and len(audio) == len(t) and np.isfinite(audio).all()
