"""The validation accumulator (codec.metrics): planted signals, silent targets, bitrates, and the
same numbers in training's validation and in `codec eval`."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from lightning import Trainer
from torch.utils.data import DataLoader

from codec.evaluate import evaluate, read_folder
from codec.metrics import AudioMetrics, CodeUsage
from codec.model import QuantizerConfig, StructureConfig
from codec.module import CodecModule

SR = 16000


def tone(samples=8000, freq=220.0, level=0.1, items=1):
    t = torch.arange(samples) / SR
    return (level * math.sqrt(2) * torch.sin(2 * math.pi * freq * t)).repeat(items, 1, 1)


def computed(pred, target, **kwargs):
    metric = AudioMetrics(SR, **kwargs)
    metric.update(pred, target)
    return {k: float(v) for k, v in metric.compute().items()}


def test_a_pure_dc_output_has_dc_fraction_1_and_no_loudness_without_dc():
    target = tone()
    result = computed(torch.full_like(target, 0.05), target)
    assert result["dc_fraction"] == pytest.approx(1.0)
    assert result["rms_ratio_no_dc"] == pytest.approx(0.0, abs=1e-6)
    assert result["dc_offset"] == pytest.approx(0.05, rel=1e-5)
    assert result["rms_ratio"] == pytest.approx(0.5, rel=1e-3)  # 0.05 DC against a 0.1 RMS tone


def test_a_tone_plus_dc_is_loud_enough_once_the_dc_is_removed():
    target = tone()
    result = computed(0.5 * target + 0.1, target)
    assert result["rms_ratio_no_dc"] == pytest.approx(0.5, rel=1e-3)
    assert result["correlation"] == pytest.approx(1.0, abs=1e-6)
    assert result["dc_fraction"] == pytest.approx(0.01 / (0.01 + 0.0025), rel=1e-3)
    assert result["rms_ratio"] == pytest.approx(math.sqrt(0.0125) / 0.1, rel=1e-3)


def test_perfect_and_inverted_outputs():
    target = tone(items=2)
    perfect = computed(target.clone(), target)
    assert perfect["mel_l1"] == pytest.approx(0.0, abs=1e-6) and perfect["stft_distance"] == pytest.approx(0.0, abs=1e-6)
    assert perfect["rms_ratio"] == pytest.approx(1.0) and perfect["correlation"] == pytest.approx(1.0)
    assert perfect["snr_db"] > 100 and perfect["silent_items"] == 0
    inverted = computed(-target, target)
    assert inverted["correlation"] == pytest.approx(-1.0) and inverted["rms_ratio"] == pytest.approx(1.0)
    assert inverted["stft_distance"] == pytest.approx(0.0, abs=1e-5)  # magnitudes only


def test_silent_targets_are_left_out_of_ratios_and_counted():
    target = torch.cat([tone(), torch.zeros(1, 1, 8000), 1e-5 * tone()])  # -100 dBFS is under the floor
    pred = torch.cat([0.5 * tone(), 0.01 * torch.randn(1, 1, 8000), 0.01 * torch.randn(1, 1, 8000)])
    result = computed(pred, target)
    assert result["silent_items"] == 2 and result["items"] == 3
    assert result["rms_ratio"] == pytest.approx(0.5, rel=1e-3)  # was 1.9e7 with an all-zero target
    assert result["snr_db"] == pytest.approx(computed(0.5 * tone(), tone())["snr_db"])
    assert all(math.isfinite(v) for v in result.values())
    only_silence = computed(torch.randn(2, 1, 8000), torch.zeros(2, 1, 8000))
    assert only_silence["silent_items"] == 2 and math.isnan(only_silence["rms_ratio"])


def test_sums_do_not_depend_on_how_the_set_is_batched():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(6, 1, 8000, generator=g) * torch.linspace(0.01, 0.3, 6).view(6, 1, 1)
    pred = 0.7 * target + 0.02 * torch.randn(6, 1, 8000, generator=g) + 0.01
    whole = computed(pred, target)
    metric = AudioMetrics(SR)
    for i in range(6):
        metric.update(pred[i : i + 1], target[i : i + 1])
    one_by_one = {k: float(v) for k, v in metric.compute().items()}
    assert one_by_one == pytest.approx(whole, rel=1e-5)


def test_loudness_difference_in_lu_of_a_louder_a_quieter_and_a_silent_output():
    target = tone(items=2)
    assert computed(2 * target, target)["loudness_diff_lu"] == pytest.approx(20 * math.log10(2), abs=0.05)
    quieter = computed(target * torch.tensor([0.5, 1.0]).view(2, 1, 1), target)
    assert quieter["loudness_diff_lu"] == pytest.approx(-3.01, abs=0.05)  # mean of -6.02 and 0
    assert quieter["loudness_diff_max_lu"] == pytest.approx(6.02, abs=0.05)
    assert quieter["loudness_items"] == 2
    # A silent output is not left out: it counts at BS.1770's -70 LUFS gate.
    silent = computed(torch.zeros_like(target), target)
    assert silent["loudness_diff_lu"] < -40 and silent["loudness_items"] == 2


def test_loudness_needs_a_gating_block_and_an_audible_target():
    short = tone(samples=4000)  # 0.25 s: shorter than BS.1770's 0.4 s block
    result = computed(short, short)
    assert result["loudness_items"] == 0 and math.isnan(result["loudness_diff_lu"])
    target = torch.cat([tone(), torch.zeros(1, 1, 8000)])  # the silent target is left out
    result = computed(torch.cat([tone(), tone()]), target)
    assert result["loudness_items"] == 1 and result["loudness_diff_lu"] == pytest.approx(0.0, abs=1e-6)


def test_band_ratios_see_where_the_level_was_lost():
    low, high = tone(freq=200.0), tone(freq=4000.0)
    result = computed(low + 0.1 * high, low + high)
    assert result["rms_ratio_0_500hz"] == pytest.approx(1.0, rel=0.02)
    assert result["rms_ratio_2000_8000hz"] == pytest.approx(0.1, rel=0.05)
    assert result["mel_l1_2000_8000hz"] > 10 * result["mel_l1_0_500hz"]  # and the mel distance with it


def test_code_usage_entropy_and_bitrates_on_a_known_config():
    usage = CodeUsage(num_quantizers=4, codebook_size=16, frame_rate=50.0)
    codes = torch.zeros(2, 3, 8, dtype=torch.long)
    codes[:, 0] = torch.arange(8)  # level 0: 8 codes equally: 3 bits
    codes[:, 1] = torch.arange(8) % 2  # level 1: 2 codes: 1 bit; level 2: one code: 0 bits
    usage.update(codes)
    result = usage.compute()
    assert [lv["bits_used"] for lv in result["levels"]] == pytest.approx([3.0, 1.0, 0.0])
    assert [lv["codes_used"] for lv in result["levels"]] == [8, 2, 1]
    assert result["levels"][0]["perplexity"] == pytest.approx(8.0)
    assert result["bitrate_kbps"] == pytest.approx(3 * 4 * 50 / 1000)  # levels x log2(16) x 50 frames/s
    assert result["bitrate_used_kbps"] == pytest.approx(4 * 50 / 1000)


def test_the_module_logs_the_nominal_bitrate_of_its_active_levels():
    module = CodecModule(quantizer=QuantizerConfig(num_quantizers=8, codebook_size=1024))
    assert module.frame_rate == 50.0  # 16 kHz / hop 320
    assert module.bitrate_kbps() == pytest.approx(8 * 10 * 50 / 1000)  # 4 kbit/s
    module.quantizer.set_num_active(3)
    assert module.bitrate_kbps() == pytest.approx(1.5)


def test_validation_and_codec_eval_give_the_same_numbers_on_the_same_audio(tmp_path):
    torch.manual_seed(0)
    module = CodecModule(structure=StructureConfig(channels=4, strides=[2, 4, 5], latent_dim=16),
                         quantizer=QuantizerConfig(num_quantizers=3, codebook_size=16, dead_code_threshold=0.0))
    module.train()
    with torch.no_grad():
        module(torch.randn(4, 1, 8000) * 0.1)  # k-means init of the codebooks
    module.eval()
    rng = np.random.default_rng(0)
    items = [0.1 * rng.standard_normal(8000), 0.3 * np.sin(np.arange(8000) / 7.0), np.zeros(8000),
             0.02 * rng.standard_normal(8000)]
    for i, item in enumerate(items):  # float32 files: the same samples validation sees
        sf.write(tmp_path / f"{i}.wav", item.astype(np.float32), SR, subtype="FLOAT")
    clips, _ = read_folder(tmp_path, SR)
    batch = torch.cat([c.audio for c in sorted(clips, key=lambda c: c.file)])
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.validate(module, DataLoader(batch, batch_size=3), verbose=False)
    val = {k: float(v) for k, v in trainer.callback_metrics.items()}
    report = evaluate(module, clips)["modes"]["eval"]
    assert report["silent_items"] == val["val/audio/silent_items"] == 1
    for key in ("snr_db", "si_sdr_db", "mel_l1", "stft_distance", "rms_ratio", "rms_ratio_no_dc", "correlation",
                "dc_offset", "dc_fraction", "rms_ratio_0_500hz", "rms_ratio_500_2000hz", "rms_ratio_2000_8000hz",
                "mel_l1_0_500hz", "mel_l1_500_2000hz", "mel_l1_2000_8000hz"):
        assert report[key] == pytest.approx(val[f"val/audio/{key}"], rel=1e-4, abs=1e-6), key
    assert report["bitrate_used_kbps"] == pytest.approx(val["val/rvq/bitrate_used_kbps"], rel=1e-6)
    for level in report["levels"]:
        for key in ("perplexity", "codes_used", "bits_used"):
            assert level[key] == pytest.approx(val[f"val/rvq/q{level['level']}/{key}"], rel=1e-6)


def test_stoi_is_opt_in_and_scores_a_clean_copy_near_1():
    pytest.importorskip("pystoi")
    rng = np.random.default_rng(0)
    t = np.arange(3 * SR) / SR
    speechy = np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.05 * rng.standard_normal(t.size)
    target = torch.tensor(0.1 * speechy, dtype=torch.float32).view(1, 1, -1)
    assert "stoi" not in computed(target, target)
    clean = computed(target, target, stoi=True)["stoi"]
    noisy = computed(target + 0.1 * torch.randn_like(target), target, stoi=True)["stoi"]
    assert clean == pytest.approx(1.0, abs=1e-3) and noisy < clean
