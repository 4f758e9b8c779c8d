"""`codec compare` on two tiny runs: the table holds the numbers of metrics.csv, the curves are PNGs."""

import pytest

from codec.cli import main as codec_main
from codec.compare import comparison, config_differences, resolve
from codec.report import read_metrics, series

from test_cli import fit

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    short = ["--trainer.max_steps=4", "--trainer.val_check_interval=2"]
    return fit(root, "phase_1", *short), fit(root, "phase_b", *short)


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
            (rms,) = [v for s, v in series(rows, "val/audio/rms_ratio") if s <= step][-1:]
            (ppl,) = [v for s, v in series(rows, "val/rvq/q3/perplexity") if s <= step][-1:]
            line = next(ln for ln in table.splitlines() if ln.startswith(f"| {run_dir.parent.name}/")
                        and f"| @ {step} |" in ln)
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert float(cells[2]) == pytest.approx(rms, rel=1e-3)     # RMS ratio column
            assert float(cells[8]) == pytest.approx(ppl, rel=1e-3)     # ppl q3 column
    assert "| model.quantizer.normalization | zscore | l2 |" in table
    for name in ("val_audio_rms_ratio", "val_audio_snr_db", "val_rvq_q0_perplexity", "train_loss_total"):
        png = out / f"{name}.png"
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG


def test_compare_takes_a_run_name_for_its_latest_version_and_defaults_to_the_last_common_step(two_runs):
    run_dirs = [resolve(d.parent) for d in two_runs]  # runs/<name> -> its latest version_N
    assert run_dirs == list(two_runs)
    _, rows = comparison(run_dirs)
    last = max(s for s, _ in series(read_metrics(two_runs[0]), "val/audio/rms_ratio"))
    assert [r["step"] for r in rows] == [last, last]
    assert config_differences(list(two_runs))["model.quantizer.codebook_dim"] == [None, 8]
