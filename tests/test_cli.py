"""The LightningCLI path: phase configs, overrides, run directories, checkpoints, encode/decode (F1, F4)."""

import copy
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from codec.callbacks import ProgressiveRVQ
from codec.cli import CodecCLI, main
from codec.runs import read_metrics

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
    # phase_b is DAC's quantizer, straight-through inside each level included
    assert model.quantizer.straight_through == ("level" if phase == "phase_b" else "stack")
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


@pytest.mark.parametrize("override, words", [
    ("--model.quantizer.normalization=batchnorm", "model.quantizer.normalization must be one of .* got 'batchnorm'"),
    ("--model.quantizer.decay=1.5", "model.quantizer.decay must be in"),
    ("--model.quantizer.codebook_size=1", "model.quantizer.codebook_size must be an integer >= 2"),
    ("--model.quantizer.straight_through=dac", "model.quantizer.straight_through must be one of .* got 'dac'"),
    ("--model.structure.channels=0", "model.structure.channels must be >= 1, got 0"),
    ("--model.structure.final_conv=bogus", "model.structure.final_conv must be one of"),
    ("--model.structure.strides=[3,4]", "8000 samples, not a multiple of the encoder hop 12"),
    ("--data.segment_seconds=0.51", "8160 samples, not a multiple of the encoder hop 320"),
    ("--model.sample_rate=24000", "model.sample_rate=24000 differs from data.sample_rate=16000"),
    ("--model.quantizer.normalisation=zscore", "Option 'normalisation' is not accepted"),
])
def test_bad_values_are_one_line_errors_before_any_run_directory(tmp_path, capsys, override, words):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(CONF / "phase_b.yaml"), f"--run.root={tmp_path}", "--run.wandb=true", override])
    assert exit_.value.code == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert re.search(words, line), line
    assert line.startswith("codec fit: error: ")
    assert not any(tmp_path.iterdir())  # no run directory was made


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


def test_default_root_dir_is_the_run_root_when_given(tmp_path):
    CodecCLI(args=["fit", "-c", str(CONF / "phase_1.yaml"), *TINY, f"--run.root={tmp_path / 'unused'}",
                   "--trainer.max_steps=1", f"--trainer.default_root_dir={tmp_path / 'mine'}"])
    assert (tmp_path / "mine" / "phase_1" / "version_0" / "metrics.csv").is_file()
    assert not (tmp_path / "unused").exists()


def validation_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("val/audio/snr_db")]


def test_every_fit_validates_at_step_0_and_at_its_last_step(tmp_path):
    run_dir = fit(tmp_path, "phase_1", "--trainer.max_steps=7", "--trainer.val_check_interval=5")
    assert validation_steps(run_dir) == [0, 5, 7]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 7 == validation_steps(run_dir)[-1]  # the verdict's step is the last row's
    on_interval = fit(tmp_path / "b", "phase_1", "--trainer.max_steps=6", "--trainer.val_check_interval=3")
    assert validation_steps(on_interval) == [0, 3, 6]  # the last step validates once
    off = fit(tmp_path / "c", "phase_1", "--trainer.max_steps=4", "--trainer.val_check_interval=3",
              "--validation.at_start=false", "--validation.at_end=false")
    assert validation_steps(off) == [3]


# --- real audio that turns out bad mid-run -------------------------------------------------------


def write_tone(path: Path, seconds: float, nan: bool = False, subtype: str = "FLOAT") -> None:
    t = np.arange(round(16000 * seconds)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    if nan:
        audio[len(audio) // 2 : len(audio) // 2 + 100] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, 16000, subtype=subtype)


def test_a_training_file_with_nan_samples_is_skipped_by_name_and_the_run_goes_on(tmp_path):
    data = tmp_path / "audio"
    write_tone(data / "train" / "nan.wav", 0.5, nan=True)  # one segment long: every crop holds the NaN
    for i in range(3):
        write_tone(data / "train" / f"good{i}.wav", 1.0)
    write_tone(data / "val" / "v.wav", 1.0)
    cli = CodecCLI(args=["fit", "-c", str(CONF / "phase_1.yaml"), *TINY, f"--run.root={tmp_path}",
                         f"--data.data_dir={data}", "--trainer.max_steps=6", "--trainer.val_check_interval=3",
                         "--data.num_workers=2"])
    run_dir = Path(cli.trainer.log_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 6
    # Found in a DataLoader worker, known to the main process (the worker's warning named it on stderr).
    assert [(p.name, reason) for p, reason in cli.datamodule.skipped_files()] == [("nan.wav", "NaN or inf samples")]


def test_a_run_whose_only_validation_file_is_corrupt_mid_file_still_trains(tmp_path):
    data = tmp_path / "audio"
    for i in range(2):
        write_tone(data / f"good{i}.wav", 1.0)
    write_tone(tmp_path / "val" / "only.flac", 3.0, subtype="PCM_16")
    raw = bytearray((tmp_path / "val" / "only.flac").read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 2000] = bytes(2000)
    (tmp_path / "val" / "only.flac").write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="NO VALIDATION"):
        run_dir = fit(tmp_path, "phase_1", f"--data.data_dir={data}", f"--data.val_dir={tmp_path / 'val'}",
                      "--trainer.max_steps=4", "--trainer.val_check_interval=2")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


# --- the command line ----------------------------------------------------------------------------


def test_codec_help_lists_every_subcommand(capsys):
    from codec.cli import TOOLS

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert listed == {"fit", "validate", "test", "predict", *TOOLS}
    assert {"encode", "decode", "inspect", "eval", "sweep", "compare"} <= set(TOOLS)


def test_a_tool_given_as_a_bare_module_is_listed_with_its_docstring(monkeypatch, capsys):
    from codec import cli

    monkeypatch.setitem(cli.TOOLS, "health", "codec.inspection")  # the one-line way to add a tool
    with pytest.raises(SystemExit):
        main(["-h"])
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["health"]]
    assert len(line.split()) > 1  # the module docstring's first line


@pytest.mark.parametrize("command", ["encode", "decode"])
def test_encode_and_decode_name_a_missing_or_bad_file_in_one_line(tmp_path, capsys, command):
    good_wav = tmp_path / "in.wav"
    write_tone(good_wav, 0.4)
    not_a_checkpoint = tmp_path / "junk.ckpt"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    cases = [tmp_path / "missing.ckpt", not_a_checkpoint]
    for checkpoint in cases:
        args = [str(checkpoint), str(good_wav), str(tmp_path / "out.pt")] if command == "encode" else \
               [str(checkpoint), str(tmp_path / "missing.codes.pt"), str(tmp_path / "out.wav")]
        with pytest.raises(SystemExit) as done:
            main([command, *args])
        assert done.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"codec {command}: ")
        named = checkpoint if command == "encode" else tmp_path / "missing.codes.pt"
        assert str(named) in err


def test_decode_keeps_the_inputs_sample_format_unless_asked(tmp_path):
    run_dir = fit(tmp_path, "phase_1", "--trainer.max_steps=2")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    wav, codes = tmp_path / "in16.wav", tmp_path / "in16.codes.pt"
    write_tone(wav, 0.4, subtype="PCM_16")
    for args in (["encode", str(ckpt), str(wav), str(codes)],
                 ["decode", str(ckpt), str(codes), str(tmp_path / "out.wav")],
                 ["decode", str(ckpt), str(codes), str(tmp_path / "out_float.wav"), "--subtype", "FLOAT"]):
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code == 0
    assert sf.info(str(tmp_path / "out.wav")).subtype == "PCM_16"
    assert sf.info(str(tmp_path / "out_float.wav")).subtype == "FLOAT"
    with pytest.raises(SystemExit) as done:
        main(["decode", str(ckpt), str(codes), str(tmp_path / "bad.wav"), "--subtype", "VORBIS"])
    assert done.value.code == 2


def test_monitors_can_tell_the_start_validation_from_the_others(tmp_path):
    import lightning as L

    from codec.validation_schedule import is_start_validation

    seen = []

    class Watch(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            seen.append((trainer.global_step, is_start_validation(trainer)))

    cli = CodecCLI(args=["-c", str(CONF / "phase_1.yaml"), *TINY, f"--run.root={tmp_path}", "--trainer.max_steps=4",
                         "--trainer.val_check_interval=2", "--run.diagnostics=false"], run=False)
    cli.trainer.callbacks.append(Watch())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert seen == [(0, True), (2, False), (4, False)]
