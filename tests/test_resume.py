"""Resuming: one run directory holds the whole history, the data order and the metrics continue as if
the run had never stopped; checkpoints are written atomically; metrics.csv exists whatever happens."""

import csv
import math
from pathlib import Path

import pytest
import torch

from codec.cli import main

from helpers import CONF, TINY

# The monitors stay out: they file their validation rows by their own rule (codec/callbacks/log_now.py).
RUN = [*TINY, "--trainer.val_check_interval=5", "--run.checkpoint_every=5", "--run.diagnostics=false",
       "--trainer.callbacks+=batch_recorder.BatchRecorder"]


def fit(root: Path, *args: str) -> None:
    main(["fit", "-c", str(CONF / "phase_1.yaml"), *RUN, f"--run.root={root}", *args])


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def by_step_and_keys(table: list[dict]) -> dict:
    out = {}
    for row in table:
        key = (int(row["step"]), tuple(sorted(k for k in row if k not in ("step", "epoch"))))
        assert key not in out, f"row {key[0]} logged twice"
        out[key] = row
    return out


def test_a_resumed_run_continues_its_directory_data_order_and_metrics(tmp_path):
    fit(tmp_path / "straight", "--trainer.max_steps=10")
    fit(tmp_path / "halves", "--trainer.max_steps=5")
    first = tmp_path / "halves" / "phase_1" / "version_0"
    assert torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    fit(tmp_path / "halves", "--trainer.max_steps=10", f"--ckpt_path={first / 'checkpoints' / 'last.ckpt'}")

    assert [p.name for p in (tmp_path / "halves" / "phase_1").iterdir()] == ["version_0"]  # one directory
    straight = tmp_path / "straight" / "phase_1" / "version_0"
    assert (first / "batches.txt").read_text() == (straight / "batches.txt").read_text()  # the same batches
    assert len((first / "batches.txt").read_text().splitlines()) == 10

    expected, resumed = by_step_and_keys(rows(straight)), by_step_and_keys(rows(first))
    assert resumed.keys() == expected.keys()
    for key, row in expected.items():
        for name, value in row.items():
            assert math.isclose(resumed[key][name], value, rel_tol=1e-4, abs_tol=1e-5), (key[0], name)
    validated = sorted({step for (step, keys) in expected if "val/audio/snr_db" in keys})
    assert validated == [0, 5, 10]  # at the start, every interval and at the end


def test_a_resumed_run_drops_the_rows_it_will_train_again(tmp_path):
    """A run killed after its checkpoint (steps 6..7 logged, checkpoint at 5) resumes with steps 6..7 once."""
    fit(tmp_path, "--trainer.max_steps=8", "--trainer.val_check_interval=4")
    run_dir = tmp_path / "phase_1" / "version_0"
    step_5 = run_dir / "checkpoints" / "epoch=1-step=5.ckpt"
    assert step_5.is_file()
    fit(tmp_path, "--trainer.max_steps=8", "--trainer.val_check_interval=4", f"--ckpt_path={step_5}")
    table = rows(run_dir)
    assert sorted(int(r["step"]) for r in table if "train/loss/total" in r) == list(range(8))
    assert [p.name for p in (tmp_path / "phase_1").iterdir()] == ["version_0"]


# --- checkpoints written atomically --------------------------------------------------------------


def test_an_interrupted_checkpoint_save_leaves_the_previous_one_intact_whatever_tmpdir_is(tmp_path, monkeypatch):
    from codec.atomic_checkpoint import AtomicCheckpointIO

    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))  # another folder (a tmpfs, in the report)
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 5, "weights": torch.ones(1000)}, target)
    before = target.read_bytes()

    real_save = torch.save

    def save_half_then_die(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process is interrupted mid-write

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 10, "weights": torch.zeros(1000)}, target)
    monkeypatch.setattr(torch, "save", real_save)

    assert target.read_bytes() == before
    assert torch.load(target, weights_only=True)["global_step"] == 5
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file left
    assert not any((tmp_path / "elsewhere").iterdir())  # nothing staged in $TMPDIR

    renames = []
    monkeypatch.setattr("os.replace", lambda src, dst: renames.append((Path(src), Path(dst))) or
                        Path(src).rename(dst))
    io.save_checkpoint({"global_step": 10}, target)
    [(source, destination)] = renames
    assert source.parent == target.parent and destination == target  # written beside it, then renamed
    assert torch.load(target, weights_only=True)["global_step"] == 10


def test_the_cli_saves_checkpoints_through_the_atomic_writer(tmp_path):
    from codec.atomic_checkpoint import AtomicCheckpointIO
    from codec.cli import CodecCLI

    cli = CodecCLI(args=["-c", str(CONF / "phase_1.yaml"), *TINY, f"--run.root={tmp_path}"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# --- metrics.csv whatever happens ----------------------------------------------------------------


def test_a_run_that_fails_before_its_first_log_still_leaves_metrics_csv(tmp_path, monkeypatch):
    from codec.module import CodecModule

    def fail(self, batch, batch_idx):
        raise RuntimeError("boom at the first step")

    monkeypatch.setattr(CodecModule, "training_step", fail)
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, "--trainer.max_steps=3", "--validation.at_start=false")
    run_dir = tmp_path / "phase_1" / "version_0"
    assert (run_dir / "metrics.csv").is_file()
    assert rows(run_dir) == []


def test_a_fresh_run_does_not_warn_that_its_logs_will_be_deleted(tmp_path, recwarn, capsys):
    fit(tmp_path, "--trainer.max_steps=2", "--run.wandb=true")  # wandb/ and config.yaml come first
    said = " ".join(str(w.message) for w in recwarn) + " ".join(capsys.readouterr())
    assert "will be deleted" not in said
    run_dir = tmp_path / "phase_1" / "version_0"
    assert {int(r["step"]) for r in rows(run_dir) if "train/loss/total" in r} == {0, 1}


def test_the_resumed_run_directory_and_wandb_id_come_from_the_checkpoint_path(tmp_path):
    from codec.resume import run_directory_of, wandb_run_id

    run_dir = tmp_path / "phase_b" / "version_3"
    assert run_directory_of(run_dir / "checkpoints" / "last.ckpt") == run_dir
    assert run_directory_of(tmp_path / "elsewhere" / "model.ckpt") is None
    assert wandb_run_id(run_dir) is None
    for name in ("offline-run-20260101_120000-abc123", "offline-run-20260102_080000-def456"):
        (run_dir / "wandb" / name).mkdir(parents=True)
    assert wandb_run_id(run_dir) == "def456"  # the newest
