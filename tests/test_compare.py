"""`codec compare` and the run directories it reads (codec/runs.py): the table holds the numbers of
metrics.csv, the newest completed version is used, resumed versions are stitched, the curves say
what they show."""

import json
import shutil

import matplotlib.figure
import pytest
import yaml

from codec.cli import main as codec_main
from codec.compare import config_differences, load_runs, phase_table, plot_curves
from codec.runs import load_run, read_metrics, series

from test_cli import fit

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    short = ["--trainer.max_steps=4", "--trainer.val_check_interval=2"]
    return (fit(root, "phase_1", *short, "--diagnostics.amplitude.threshold=0.2"),
            fit(root, "phase_b", *short))


def cells_of(table: str, run_label: str, step: int) -> dict[str, str]:
    """One row of the phase table as {column: cell}."""
    lines = table.splitlines()
    header = [c.strip() for c in next(ln for ln in lines if ln.startswith("| run |")).strip("|").split("|")]
    line = next(ln for ln in lines if ln.startswith(f"| {run_label} |") and f"| @ {step} |" in ln)
    return dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))


def test_compare_writes_the_table_and_the_curves(two_runs, tmp_path, capsys):
    out = tmp_path / "compare"
    with pytest.raises(SystemExit) as done:  # through the real entry point, as `codec compare` runs
        codec_main(["compare", *map(str, two_runs), "--steps", "2,4", "--out", str(out)])
    assert done.value.code == 0
    table = (out / "compare.md").read_text()
    assert table in capsys.readouterr().out
    for run_dir in two_runs:
        rows = read_metrics(run_dir)
        for step in (2, 4):
            # "@ step": the last value logged at or before it, read here straight from metrics.csv.
            cells = cells_of(table, f"{run_dir.parent.name}/{run_dir.name}", step)
            for column, key in (("RMS ratio", "val/audio/rms_ratio"), ("ppl q3", "val/rvq/q3/perplexity"),
                                ("SI-SDR dB", "val/audio/si_sdr_db"), ("mel L1", "val/audio/mel_l1")):
                (expected,) = [v for s, v in series(rows, key) if s <= step][-1:]
                assert float(cells[column]) == pytest.approx(expected, rel=1e-3)
            # The step the run ended at is the verdict block's (summary.json), not the last logged row.
            assert cells["ended at"] == str(json.loads((run_dir / "summary.json").read_text())["steps"])
    assert "| model.quantizer.normalization | zscore | l2 |" in table
    for name in ("val_audio_rms_ratio", "val_audio_snr_db", "val_rvq_q0_perplexity", "train_loss_total"):
        png = out / f"{name}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG
    assert (out / "listen.html").is_file()  # the runs saved audio examples


def test_compare_takes_a_run_name_for_its_newest_version_and_defaults_to_the_last_common_step(two_runs):
    runs = load_runs([d.parent for d in two_runs])  # runs/<name> -> its newest completed version_N
    assert [r.path for r in runs] == list(two_runs)
    _, rows = phase_table(runs)
    last = max(s for s, _ in series(read_metrics(two_runs[0]), "val/audio/rms_ratio"))
    assert [r["step"] for r in rows] == [last, last]
    assert config_differences(runs)["model.quantizer.codebook_dim"] == [None, 8]


def test_a_newer_failed_version_is_skipped_and_named(two_runs, tmp_path, capsys):
    root = tmp_path / "phase_1"
    shutil.copytree(two_runs[0], root / "version_0")
    # version_1 crashed before its first log: config.yaml only. version_2 failed after logging.
    (root / "version_1").mkdir()
    shutil.copy(two_runs[0] / "config.yaml", root / "version_1")
    shutil.copytree(two_runs[0], root / "version_2")
    summary = json.loads((root / "version_2" / "summary.json").read_text())
    (root / "version_2" / "summary.json").write_text(json.dumps({**summary, "status": "failed",
                                                                 "error": "RuntimeError: boom"}))
    out = tmp_path / "compare"
    with pytest.raises(SystemExit) as done:
        codec_main(["compare", str(root), str(two_runs[1]), "--out", str(out)])
    assert done.value.code == 0
    err = capsys.readouterr().err
    assert "phase_1/version_2 skipped: failed (RuntimeError: boom)" in err
    assert "phase_1/version_1 skipped: no metrics.csv" in err
    table = (out / "compare.md").read_text()
    assert "| phase_1/version_0 |" in table and "version_2 skipped" in table


def write_version(root, name, steps, value, ckpt_path=None):
    """A hand-made version directory: metrics.csv with `train/loss/total` = value at each step."""
    version = root / name
    version.mkdir(parents=True)
    (version / "config.yaml").write_text(yaml.safe_dump({"ckpt_path": ckpt_path, "run": {"name": root.name}}))
    (version / "summary.json").write_text(json.dumps({"status": "finished", "steps": max(steps) + 1, "verdicts": []}))
    lines = ["epoch,step,train/loss/total"] + [f"0,{s},{value}" for s in steps]
    (version / "metrics.csv").write_text("\n".join(lines) + "\n")
    return version


def test_resumed_versions_are_stitched_by_step_preferring_the_resumed_values(tmp_path):
    root = tmp_path / "phase_x"
    # version_0 went on to step 9 after its checkpoint at step 4, then died; version_1 resumed from it.
    write_version(root, "version_0", range(10), 1.0)
    write_version(root, "version_1", range(5, 12), 2.0, ckpt_path="runs/phase_x/version_0/checkpoints/step=4.ckpt")
    write_version(root, "version_2", range(3), 3.0)  # a fresh run of the same name: not stitched
    run = load_run(root / "version_1")
    assert run.series("train/loss/total") == [(s, 1.0) for s in range(5)] + [(s, 2.0) for s in range(5, 12)]
    assert run.versions == [root / "version_0", root / "version_1"]
    assert load_run(root).series("train/loss/total") == [(s, 3.0) for s in range(3)]

    # The same inside one metrics.csv (a resume that continued the same directory): the step drops.
    lines = (root / "version_1" / "metrics.csv").read_text().splitlines()
    lines += [f"0,{s},4.0" for s in range(8, 10)]
    (root / "version_1" / "metrics.csv").write_text("\n".join(lines) + "\n")
    stitched = load_run(root / "version_1").series("train/loss/total")
    assert [s for s, _ in stitched] == list(range(10))
    assert stitched[7:] == [(7, 2.0), (8, 4.0), (9, 4.0)]


def test_a_real_resume_reads_as_one_history(tmp_path):
    first = fit(tmp_path, "phase_1", "--trainer.max_steps=4", "--trainer.val_check_interval=2")
    resumed = fit(tmp_path, "phase_1", "--trainer.max_steps=8", "--trainer.val_check_interval=2",
                  f"--ckpt_path={first / 'checkpoints' / 'last.ckpt'}")
    steps = [s for s, _ in load_run(tmp_path / "phase_1").series("train/loss/total")]
    last = series(read_metrics(resumed), "train/loss/total")[-1][0]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == last  # from the start, no step twice
    first_values = series(read_metrics(first), "train/loss/total")
    assert load_run(tmp_path / "phase_1").series("train/loss/total")[: len(first_values)] == first_values


def test_curves_have_worded_axes_reference_lines_and_marked_validations(two_runs, tmp_path, monkeypatch):
    drawn = {}
    save = matplotlib.figure.Figure.savefig

    def spy(fig, path, *args, **kwargs):
        drawn[str(path).rsplit("/", 1)[-1]] = fig.axes[0]
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    plot_curves(load_runs(two_runs), tmp_path)

    rms = drawn["val_audio_rms_ratio.png"]
    assert rms.get_ylabel() == "RMS ratio, decoded / input" and rms.get_xlabel() == "training step"
    levels = {line.get_ydata()[0] for line in rms.get_lines() if len(set(line.get_xdata())) == 2
              and line.get_linestyle() != "-"}
    assert {1.0, 0.2, 0.1} <= levels  # 1.0, phase_1's configured collapse bound, phase_b's default
    runs_lines = [line for line in rms.get_lines() if line.get_label().endswith("version_0")]
    assert len(runs_lines) == 2 and all(line.get_marker() == "o" for line in runs_lines)  # validations marked

    ppl = drawn["val_rvq_q0_perplexity.png"]
    assert ppl.get_ylabel() == "perplexity of level 0 (codes)"
    assert any(line.get_label() == "codebook size 16" and line.get_ydata()[0] == 16 for line in ppl.get_lines())
    assert drawn["val_audio_snr_db.png"].get_ylabel() == "SNR (dB)"
    loss = [line for line in drawn["train_loss_total.png"].get_lines() if line.get_label().endswith("version_0")]
    assert all(line.get_marker() in (None, "None", "") for line in loss)  # training values: a plain line
