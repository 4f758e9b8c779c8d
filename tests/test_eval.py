"""`codec eval`: metrics of a checkpoint on a folder of audio, eval mode and train mode side by side (F7)."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.cli import CodecCLI
from codec.data.folder import SkippedAudioWarning
from codec.evaluate import evaluate, main, read_folder
from codec.inference import load_module

from helpers import CONF, TINY


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    CodecCLI(args=["fit", "-c", str(CONF / "phase_1.yaml"), *TINY, f"--run.root={root}",
                   "--trainer.max_steps=3", "--trainer.val_check_interval=3"])
    (ckpt,) = (root / "phase_1").glob("version_*/checkpoints/last.ckpt")
    return ckpt


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    t = np.arange(8000) / 16000
    sf.write(root / "tone.wav", 0.1 * np.sin(2 * np.pi * 220 * t), 16000)
    (root / "sub").mkdir()
    noise = np.random.default_rng(0).normal(0, 0.05, (5000, 2))  # stereo at another rate: mixed, resampled
    sf.write(root / "sub" / "noise.wav", noise, 22050)
    (root / "broken.wav").write_bytes(b"RIFF this is not audio")
    return root


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)):
        yield value


def test_eval_json_has_both_modes_finite_metrics_and_counts_the_corrupt_file(checkpoint, folder, capsys):
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    with pytest.warns(SkippedAudioWarning, match="broken.wav"):
        assert main(["eval", str(checkpoint), "--data", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == 2 and report["skipped"] == 1 and report["skipped_files"] == ["broken.wav"]
    assert report["seconds"] == pytest.approx(0.5 + 5000 / 22050, abs=1e-3)
    assert set(report["modes"]) == {"eval", "train"}
    assert report["num_levels"] == 4
    for mode in report["modes"].values():
        # validation's val/audio/* keys (codec.metrics.AudioMetrics) and val/rvq/* (CodeUsage)
        assert set(mode) == {"snr_db", "si_sdr_db", "mel_l1", "stft_distance", "rms_ratio", "rms_ratio_no_dc",
                             "rms_ratio_0_500hz", "rms_ratio_500_2000hz", "rms_ratio_2000_8000hz", "correlation",
                             "mel_l1_0_500hz", "mel_l1_500_2000hz", "mel_l1_2000_8000hz",
                             "dc_offset", "dc_fraction", "silent_items", "items", "levels", "bitrate_kbps",
                             "bitrate_used_kbps", "loudness_diff_lu", "loudness_diff_max_lu", "loudness_items"}
        assert mode["loudness_items"] == 1  # the 0.23 s file is shorter than BS.1770's 0.4 s block
        assert mode["rms_ratio"] > 0 and mode["mel_l1"] > 0 and mode["silent_items"] == 0 and mode["items"] == 2
        assert [lv["level"] for lv in mode["levels"]] == [0, 1, 2, 3]
        assert all(1 <= lv["codes_used"] <= 16 and 1.0 <= lv["perplexity"] <= 16.0 and 0 <= lv["bits_used"] <= 4
                   for lv in mode["levels"])
        assert mode["bitrate_kbps"] == pytest.approx(4 * 4 * 16000 / 40 / 1000)  # 4 levels x 4 bits x 400 frames/s
        assert mode["bitrate_used_kbps"] == pytest.approx(sum(lv["bits_used"] for lv in mode["levels"]) * 0.4)
    assert all(math.isfinite(x) for x in _numbers(report))
    # This codec has no dropout or batch statistics and the train pass freezes the codebooks,
    # so both modes choose the same codes.
    assert report["agreement"] == [1.0, 1.0, 1.0, 1.0]
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == digest


def test_train_mode_pass_leaves_every_buffer_as_it_was(checkpoint, folder):
    module = load_module(checkpoint)
    with pytest.warns(SkippedAudioWarning):
        clips, skipped = read_folder(folder, module.sample_rate)
    assert len(clips) == 2 and len(skipped) == 1
    before = {name: b.clone() for name, b in module.named_buffers()}
    rng = torch.get_rng_state()
    result = evaluate(module, clips, num_levels=2)
    assert not module.training and not any(m.training for m in module.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    for name, buffer in module.named_buffers():
        assert torch.equal(buffer, before[name]), f"{name} changed"
    assert result["num_levels"] == 2 and len(result["agreement"]) == 2
    assert result["modes"]["train"]["snr_db"] == pytest.approx(result["modes"]["eval"]["snr_db"], abs=1e-4)

    # The control: the same forward in train mode, unprotected, does move the codebooks.
    module.train()
    with torch.no_grad():
        module.codec(clips[0].audio)
    assert not torch.equal(module.quantizer.levels[0].cluster_size, before["codec.quantizer.levels.0.cluster_size"])


def test_long_files_are_cut_into_equal_pieces(folder):
    with pytest.warns(SkippedAudioWarning):
        clips, _ = read_folder(folder, 16000, segment_seconds=0.2)
    tone = [c for c in clips if c.file == "tone.wav"]
    assert [c.piece for c in tone] == [0, 1, 2]
    assert sum(c.audio.shape[-1] for c in tone) == 8000 and all(c.audio.shape[-1] <= 3200 for c in tone)


def test_stoi_is_reported_when_asked(checkpoint, folder, capsys):
    pytest.importorskip("pystoi")
    with pytest.warns(SkippedAudioWarning):
        assert main(["eval", str(checkpoint), "--data", str(folder), "--json", "--stoi"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert all(0 <= mode["stoi"] <= 1 for mode in report["modes"].values())
    with pytest.warns(SkippedAudioWarning):
        assert main(["eval", str(checkpoint), "--data", str(folder)]) == 0
    table = capsys.readouterr().out
    assert "STFT distance" in table and "RMS ratio no DC" in table and "q0 bits used" in table
    assert "mel 2000-8000" in table and "RMS 0-500" in table  # the per-band keys, labelled


def test_missing_checkpoint_and_folder_are_named(checkpoint, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "none.ckpt"), "--data", str(tmp_path)]) == 2
    assert "none.ckpt" in capsys.readouterr().err
    assert main(["eval", str(checkpoint), "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_eval_reaches_the_diagnostics_verdicts_at_the_checkpoints_step(checkpoint, folder, tmp_path, capsys):
    # The same rules as training, on one measurement: an output 50x too loud is an explosion (F3).
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    saved["state_dict"]["codec.out_proj.weight"].mul_(50.0)
    saved["state_dict"]["codec.out_proj.bias"].mul_(50.0)
    loud = tmp_path / "loud.ckpt"
    torch.save(saved, loud)
    with pytest.warns(SkippedAudioWarning):
        assert main(["eval", str(loud), "--data", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    explosion = [v for v in report["verdicts"] if v["rule"] == "amplitude.explosion"]
    assert explosion and explosion[0]["step"] == saved["global_step"] and explosion[0]["failure"] == "F3"
    with pytest.warns(SkippedAudioWarning):
        assert main(["eval", str(loud), "--data", str(folder)]) == 0
    assert "F3 at step 3: amplitude explosion" in capsys.readouterr().out
