"""`codec fit` under DDP with 2 CPU processes (gloo): one run directory, identical quantizers, a resume.

Each fit is a subprocess, as a user runs it: Lightning's DDP launcher starts rank 1 by running the
same command again.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from codec.runs import load_run

from helpers import CONF, TINY

REPO = Path(__file__).resolve().parents[1]
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]


def fit_ddp(tmp_path: Path, dump: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
           "DDP_DUMP_DIR": str(dump), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "codec.cli", "fit", "-c", str(CONF / "phase_2a.yaml"), *TINY,
               f"--run.root={tmp_path}", "--trainer.val_check_interval=10", "--trainer.callbacks.every=10",
               "--trainer.callbacks+=ddp_probe.DumpQuantizerState", "--diagnostics.amplitude.mode=warn", *DDP, *args]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def rank_states(dump: Path) -> tuple[dict, dict]:
    return (torch.load(dump / "rank0.pt", weights_only=True), torch.load(dump / "rank1.pt", weights_only=True))


def assert_identical(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"ranks differ in {different}"


def test_a_two_process_progressive_run_keeps_one_quantizer_state_one_run_directory_and_resumes(tmp_path):
    done = fit_ddp(tmp_path, tmp_path / "dump", "--trainer.max_steps=30")
    zero, one = rank_states(tmp_path / "dump")
    assert int(zero["global_step"]) == 30
    assert_identical(zero, one)
    assert int(zero["codec.quantizer.num_active"]) == 4  # the schedule at step 30, a level every 10 steps
    steps = [int(zero[f"codec.quantizer.levels.{i}.trained_steps"]) for i in range(4)]
    assert steps[0] == 30 and steps[1] == 20 and steps[2] == 10 and steps[3] == 0  # level 3: switched on at 30

    (version,) = (tmp_path / "phase_2a").glob("version_*")
    summary = json.loads((version / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 30
    assert summary["quantizers"]["codec.quantizer"]["active"] == 4
    run = load_run(version)
    assert [s for s, _ in run.series("val/audio/rms_ratio")] == [0, 10, 20, 30]
    assert {s for s, _ in run.series("train/loss/total")} >= {4, 9, 14, 19, 24, 29}
    assert "Run finished at step 30" in done.stdout

    # Resumed under DDP from the checkpoint: the same directory, the schedule and the quantizer go on.
    ckpt = version / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert next(v for k, v in saved["callbacks"].items() if k.startswith("ProgressiveRVQ"))["num_active"] == 4
    fit_ddp(tmp_path, tmp_path / "dump2", "--trainer.max_steps=40", f"--ckpt_path={ckpt}")
    zero, one = rank_states(tmp_path / "dump2")
    assert int(zero["global_step"]) == 40
    assert_identical(zero, one)
    assert list((tmp_path / "phase_2a").glob("version_*")) == [version]
    assert json.loads((version / "summary.json").read_text())["steps"] == 40
    assert [s for s, _ in load_run(version).series("val/audio/rms_ratio")][-1] == 40
