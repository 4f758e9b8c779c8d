"""`codec inspect`: codebook health of a checkpoint (F1, F2), and encode/decode's warning about untrained levels."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from codec.cli import CodecCLI
from codec.inference import UntrainedLevelWarning, decode_file, encode_file
from codec.inspection import inspect_checkpoint, main
from codec.module import CodecModule
from codec.quantize import ResidualVQ

from helpers import CONF, TINY

REPO = Path(__file__).resolve().parents[1]


def run_fresh(*args: str) -> subprocess.CompletedProcess:
    """A command in a fresh Python process (nothing carried over from this one)."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def trained_checkpoint(path: Path, active: int | None = None, steps: int = 3) -> Path:
    """A CodecModule with 8 tiny levels trained `steps` steps by a real Trainer, `active` levels on."""
    module = CodecModule(structure={"channels": 4, "strides": [2, 4, 5], "latent_dim": 16},
                         quantizer={"num_quantizers": 8, "codebook_size": 16, "dead_code_threshold": 0.1})
    if active is not None:
        module.quantizer.set_num_active(active)
    audio = 0.1 * torch.randn(4 * steps, 1, 4000)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(module, DataLoader(audio, batch_size=4))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    return trained_checkpoint(tmp_path_factory.mktemp("healthy") / "healthy.ckpt")


@pytest.fixture(scope="module")
def two_of_eight(tmp_path_factory) -> Path:
    return trained_checkpoint(tmp_path_factory.mktemp("two") / "two.ckpt", active=2)


def test_planted_f1_progressive_checkpoint_decodes_with_3_levels_and_inspect_says_so(tmp_path):
    # The scale model of F1: progressive every=2 saved at step 4 is the reports' every=2000 at step 4000.
    CodecCLI(args=["fit", "-c", str(CONF / "phase_1.yaml"), *TINY, f"--run.root={tmp_path}",
                   "--trainer.max_steps=4", "--trainer.val_check_interval=4",
                   "--trainer.callbacks+=codec.callbacks.ProgressiveRVQ", "--trainer.callbacks.every=2"])
    (ckpt,) = (tmp_path / "phase_1").glob("version_*/checkpoints/last.ckpt")

    # inspect, encode and decode through the `codec` entry point, in one fresh process.
    wav, codes, out = tmp_path / "in.wav", tmp_path / "in.codes.pt", tmp_path / "out.wav"
    sf.write(wav, 0.1 * np.sin(2 * np.pi * 220 * np.arange(6400) / 16000), 16000)
    script = ("import sys; from codec.cli import main\n"
              "c, w, p, o = sys.argv[1:]\n"
              "for argv in (['inspect', c, '--json'], ['encode', c, w, p], ['decode', c, p, o]):\n"
              "    try:\n        main(argv)\n"
              "    except SystemExit as done:\n        assert done.code == 0, (argv, done.code)\n")
    done = run_fresh("-c", script, str(ckpt), str(wav), str(codes), str(out))
    assert done.returncode == 0, done.stderr
    report, _ = json.JSONDecoder().raw_decode(done.stdout)
    assert report["global_step"] == 4
    (q,) = report["quantizers"]
    assert q["prefix"] == "codec.quantizer" and q["num_levels"] == 4 and q["codebook_size"] == 16
    assert q["num_active"] == 3 and q["scheduled_num_active"] == 3
    assert [f["active"] for f in q["levels"]] == [True, True, True, False]
    assert q["never_trained"] == [2, 3]
    assert [f["used_codes"] for f in q["levels"]][2:] == [0, 0]
    assert q["levels"][0]["trained_steps"] == 4 and q["levels"][1]["trained_steps"] == 2
    assert "levels 2..3 never trained; decoding uses 3 (num_active buffer)" in report["notes"]
    # The schedule switched level 2 on at the checkpoint's own step: it did its job, and the level
    # has not had a step yet. A note (and encode/decode's warning), not an F1: the live monitor
    # raised none at that activation either.
    assert not [v for v in report["verdicts"] if v["failure"] == "F1"]
    (note,) = [n for n in report["notes"] if "switched on" in n]
    assert "level 2 switched on at step 4 by the schedule" in note and "--num-levels 2" in note

    # encode and decode used the checkpoint's 3 levels, and said loudly that q2 is noise.
    assert torch.load(codes, weights_only=True)["codes"].shape[1] == 3
    assert sf.read(out)[0].shape == (6400,)
    assert "codec encode: WARNING" in done.stderr and "codec decode: WARNING" in done.stderr
    assert "q2 never trained" in done.stderr and "--num-levels 2" in done.stderr

    # The advice works: the two trained levels decode without the warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        decode_file(ckpt, codes, tmp_path / "two.wav", num_levels=2)
        assert not [w for w in caught if issubclass(w.category, UntrainedLevelWarning)]
        encode_file(ckpt, wav, tmp_path / "again.pt")
        assert [w for w in caught if issubclass(w.category, UntrainedLevelWarning)]


def test_untrained_inactive_levels_are_reported_and_decoding_uses_the_buffer(two_of_eight, capsys):
    report = inspect_checkpoint(two_of_eight)
    (q,) = report.quantizers
    assert q.num_levels == 8 and q.num_active == 2 and q.scheduled_num_active is None
    assert q.never_trained == [2, 3, 4, 5, 6, 7]
    assert all(f.trained and f.trained_steps == 3 and f.used_codes > 0 for f in q.levels[:2])
    assert all(f.used_codes == 0 and f.dead_codes == 16 and f.trained_steps == 0 for f in q.levels[2:])
    # Still at their random init: std about 1, values within about ±4, as in the report.
    assert all(0.5 < f.value_std < 1.5 and max(-f.value_min, f.value_max) < 5 for f in q.levels[2:])
    assert report.notes == ["levels 2..7 never trained; decoding uses 2 (num_active buffer)"]
    assert report.verdicts == []  # inactive untrained levels are a fact, not a failure

    assert main(["inspect", str(two_of_eight)]) == 0
    printed = capsys.readouterr().out
    assert "levels 2..7 never trained; decoding uses 2 (num_active buffer)" in printed
    assert "NEVER" in printed and "num_active buffer 2" in printed


def test_active_levels_that_never_trained_are_an_f1_verdict(two_of_eight, tmp_path):
    # The reports' inference: the default 8 levels on a model whose levels 2..7 never trained.
    checkpoint = torch.load(two_of_eight, map_location="cpu", weights_only=True)
    checkpoint["state_dict"]["codec.quantizer.num_active"].fill_(8)
    torch.save(checkpoint, tmp_path / "eight.ckpt")
    report = inspect_checkpoint(tmp_path / "eight.ckpt")
    assert report.notes == ["levels 2..7 never trained; decoding uses 8 (num_active buffer)"]
    (f1,) = report.verdicts
    assert f1.failure == "F1" and f1.step == 3
    assert f1.message.startswith("levels 2..7 are active but never trained: their codes are noise")
    assert "--num-levels 2" in f1.remedy


def test_healthy_checkpoint_has_no_verdicts(healthy, capsys):
    report = inspect_checkpoint(healthy)
    (q,) = report.quantizers
    assert q.num_active == 8 and q.never_trained == []
    assert report.verdicts == [] and report.notes == []
    assert report.rules_from is None and report.rules["drift_factor"] == 6.0  # no run directory: the defaults
    assert main(["inspect", str(healthy), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["verdicts"] == [] and printed["quantizers"][0]["never_trained"] == []
    levels = printed["quantizers"][0]["levels"]
    assert all(1.0 <= level["usage_perplexity"] <= 16 for level in levels)  # from the EMA usage


def test_planted_f2_drift_and_dead_codes(healthy, tmp_path):
    checkpoint = torch.load(healthy, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    book = state["codec.quantizer.levels.0.codebook"]
    state["codec.quantizer.levels.0.cluster_size"][:14] = 0.0  # 14 of 16 codes dead
    # The scale of the inputs the two codes in use were fit to; then every code runs away x30.
    state["codec.quantizer.levels.0.input_scale"] = book[14:].abs().max().clone()
    book.mul_(30.0)
    for level in range(8):
        state[f"codec.quantizer.levels.{level}.trained_steps"].fill_(1000)  # past the rules' settling time
    torch.save(checkpoint, tmp_path / "f2.ckpt")
    report = inspect_checkpoint(tmp_path / "f2.ckpt")
    level0 = report.quantizers[0].levels[0]
    assert level0.dead_codes == 14 and level0.used_codes == 2
    assert [(v.failure, v.rule, v.subject) for v in report.verdicts] == [
        ("F2", "codebook.drift", "q0"), ("F2", "codebook.dead_codes", "q0")]
    assert "30.0x the largest |input|" in report.verdicts[0].message
    assert "Q0 has 14/16 dead codes" in report.verdicts[1].message
    # Older checkpoints hold no input scale: drift is not judged, and the report says so.
    del state["codec.quantizer.levels.0.input_scale"]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    report = inspect_checkpoint(tmp_path / "old.ckpt")
    assert [v.rule for v in report.verdicts] == ["codebook.dead_codes"]
    assert any("no input_scale stored" in n for n in report.notes)


def test_any_module_holding_a_residual_vq_is_inspected(tmp_path):
    # F7 came from a classifier: the quantizer is found by its keys, wherever it sits.
    rvq = ResidualVQ(dim=8, num_quantizers=3, codebook_size=8, dead_code_threshold=0.0)
    rvq.set_num_active(2)
    rvq.train()
    rvq(torch.randn(4, 8, 50))
    state = {f"classifier.bottleneck.{k}": v for k, v in rvq.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 1}, tmp_path / "classifier.ckpt")
    report = inspect_checkpoint(tmp_path / "classifier.ckpt")
    (q,) = report.quantizers
    assert q.prefix == "classifier.bottleneck" and q.num_levels == 3 and q.num_active == 2
    assert q.never_trained == [2]
    assert report.rules_from is None  # no hyper_parameters nor run directory: the default rules


def test_missing_and_non_checkpoint_files_fail_with_a_message_naming_them(tmp_path, capsys):
    missing = tmp_path / "nope.ckpt"
    assert main(["inspect", str(missing)]) == 2
    assert f"checkpoint not found: {missing}" in capsys.readouterr().err
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    assert main(["inspect", str(text)]) == 2
    assert f"{text} is not a PyTorch checkpoint" in capsys.readouterr().err
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}}, tmp_path / "plain.ckpt")
    assert main(["inspect", str(tmp_path / "plain.ckpt")]) == 2
    assert "holds no codec.quantize.ResidualVQ" in capsys.readouterr().err


def test_a_level_whose_codebook_never_moved_did_not_train(healthy, tmp_path):
    # F6's EMA of the quantized vectors leaves a codebook where it started, however many steps run.
    checkpoint = torch.load(healthy, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    state["codec.quantizer.levels.3.codebook"].copy_(state["codec.quantizer.levels.3.initial_codebook"])
    torch.save(checkpoint, tmp_path / "stuck.ckpt")
    report = inspect_checkpoint(tmp_path / "stuck.ckpt")
    assert report.quantizers[0].never_trained == [3]
    assert any("level 3: 3 training steps but its codebook never moved" in n for n in report.notes)
    assert [v.failure for v in report.verdicts] == ["F1"]


def test_json_output_turns_non_finite_numbers_into_strings():
    from codec.json_safe import json_safe

    safe = json_safe({"snr_db": float("nan"), "levels": [{"ratio": float("inf")}, 1.5], "name": "q0"})
    assert safe == {"snr_db": "nan", "levels": [{"ratio": "inf"}, 1.5], "name": "q0"}
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe
