"""`codec sweep` end to end at the TINY size: resuming, parallel workers, failed and pruned trials,
search-space typos rejected before any trial."""

import csv
from pathlib import Path

import optuna
import pytest
import yaml
from lightning.pytorch.callbacks import Callback
from optuna.trial import TrialState

from codec.diagnostics import Verdict
from codec.report import last_value, read_metrics
from codec.sweep.command import main

from helpers import TINY

REPO = Path(__file__).resolve().parents[1]


class PlantedCollapse(Callback):
    """Declares amplitude collapse the way codec.callbacks' monitor does (a sustained verdict in
    `stop_verdict`), on the zscore arm only, from step 1."""

    def __init__(self):
        self.stop_verdict = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.quantizer.normalization == "zscore" and trainer.global_step >= 1 and self.stop_verdict is None:
            self.stop_verdict = Verdict("F3", trainer.global_step, "planted collapse", "none", "amplitude.collapse")


# The diagnostics monitors are not what these tests are about (the normalization test keeps them);
# without them a tiny trial costs about half.
QUICK = [*TINY, "--run.diagnostics=false"]


def sweep_file(tmp_path: Path, space: dict, steps: int = 3, trials: int = 2, **extra) -> Path:
    spec = {"base": "conf/waveform_l1.yaml", "overrides": QUICK, "space": space, "trials": trials,
            "steps": steps, "val_every": steps, **extra}
    path = tmp_path / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def sweep(path, root, *args) -> int:
    return main(["sweep", str(path), f"--root={root}", "--no-wandb", *args])


def load(root: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / name / 'study.db'}")


def test_normalization_sweep_runs_resumes_and_writes_the_table(tmp_path):
    shipped = REPO / "sweeps" / "normalization.yaml"
    assert sweep(shipped, tmp_path, "--trials=3", "--steps=3", "--", *TINY) == 0
    study = load(tmp_path, "normalization")
    first = {t.number: t.params["model.quantizer.normalization"] for t in study.trials}
    assert len(first) == 3 and all(t.state == TrialState.COMPLETE for t in study.trials)

    # Each trial is a normal run directory, named and tagged by its arm (the W&B group and tags).
    for t in study.trials:
        run_dir = Path(t.user_attrs["run_dir"])
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        arm = f"normalization={t.params['model.quantizer.normalization']}"
        assert config["run"]["name"] == arm and run_dir.parent.name == arm
        assert config["run"]["tags"] == ["sweep:normalization", arm]
        assert config["model"]["quantizer"]["normalization"] == t.params["model.quantizer.normalization"]
        assert t.value == pytest.approx(last_value(read_metrics(run_dir), "val/audio/snr_db"))

    # Re-running the same command (the file says 4 trials) resumes: one more trial, the missing arm.
    assert sweep(shipped, tmp_path, "--steps=3", "--", *TINY) == 0
    study = load(tmp_path, "normalization")
    assert {t.number: t.params["model.quantizer.normalization"] for t in study.trials if t.number < 3} == first
    assert sorted(t.params["model.quantizer.normalization"] for t in study.trials) == \
        ["l2", "none", "rms_scale", "zscore"]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len(list((tmp_path / "normalization").glob("trial_*/*/version_*"))) == 4  # none re-run

    with (tmp_path / "normalization" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == [t.number for t in sorted(study.trials, key=lambda t: -t.value)]
    for row in rows:
        metrics = read_metrics(row["run_dir"])
        assert float(row["rms_ratio"]) == pytest.approx(last_value(metrics, "val/audio/rms_ratio"))
        assert float(row["q0_perplexity"]) == pytest.approx(last_value(metrics, "val/rvq/q0/perplexity"))
        assert row["state"] == "complete" and row["collapsed"] == "False"
    table = (tmp_path / "normalization" / "results.md").read_text()
    assert table.count("| complete |") == 4
    assert (tmp_path / "normalization" / "objective_by_normalization.png").stat().st_size > 0

    # --report rewrites the table from the storage alone; nothing runs.
    (tmp_path / "normalization" / "results.md").unlink()
    assert sweep(shipped, tmp_path, "--report") == 0
    assert (tmp_path / "normalization" / "results.md").read_text().count("| complete |") == 4
    assert len(load(tmp_path, "normalization").trials) == 4


def test_two_workers_share_one_study_without_losing_or_repeating_trials(tmp_path):
    path = sweep_file(tmp_path, {"model.quantizer.normalization": "choice(none, zscore, l2, rms_scale)"},
                      trials=4)
    assert sweep(path, tmp_path, "-j", "2") == 0
    trials = load(tmp_path, "tiny_sweep").trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.params["model.quantizer.normalization"] for t in trials}) == 4
    run_dirs = {t.user_attrs["run_dir"] for t in trials}
    assert len(run_dirs) == 4 and all(Path(d, "metrics.csv").is_file() for d in run_dirs)


def test_a_failing_trial_is_recorded_with_its_error_and_the_next_one_runs(tmp_path):
    # 'bogus' parses (final_conv is a str) but the model rejects it when the trial builds it.
    path = sweep_file(tmp_path, {"model.structure.final_conv": "choice(none, bogus)"})
    assert sweep(path, tmp_path) == 0
    failed, complete = sorted(load(tmp_path, "tiny_sweep").trials, key=lambda t: t.number)
    assert failed.state == TrialState.FAIL and failed.params["model.structure.final_conv"] == "bogus"
    assert "ValueError" in failed.user_attrs["error"] and "'bogus'" in failed.user_attrs["error"]
    assert complete.state == TrialState.COMPLETE  # it ran after the failure
    table = (tmp_path / "tiny_sweep" / "results.md").read_text()
    assert "| failed |" in table and "'bogus'" in table


def test_collapsing_and_diverging_trials_are_pruned_at_once(tmp_path):
    path = sweep_file(tmp_path, {"model.quantizer.normalization": "choice(none, zscore)"}, steps=6,
                      overrides=[*QUICK, "--trainer.callbacks+=test_sweep.PlantedCollapse"])
    assert sweep(path, tmp_path) == 0
    trials = {t.params["model.quantizer.normalization"]: t for t in load(tmp_path, "tiny_sweep").trials}
    collapsed, healthy = trials["zscore"], trials["none"]
    assert collapsed.state == TrialState.PRUNED and "F3" in collapsed.user_attrs["pruned"]
    assert max(r["step"] for r in read_metrics(collapsed.user_attrs["run_dir"])) <= 2  # stopped at once
    assert healthy.state == TrialState.COMPLETE
    assert max(r["step"] for r in read_metrics(healthy.user_attrs["run_dir"])) >= 5
    rows = list(csv.DictReader((tmp_path / "tiny_sweep" / "results.csv").open()))
    assert {r["state"]: r["collapsed"] for r in rows} == {"pruned": "True", "complete": "False"}

    # An absurd learning rate: the weights blow up after one step; pruned, not failed.
    path = sweep_file(tmp_path, {"optimizer.init_args.lr": "choice(0.001, 1e30)"}, name="diverge")
    assert sweep(path, tmp_path) == 0
    trials = {t.params["optimizer.init_args.lr"]: t for t in load(tmp_path, "diverge").trials}
    assert trials[1e30].state == TrialState.PRUNED and "not finite" in trials[1e30].user_attrs["pruned"]
    assert trials[0.001].state == TrialState.COMPLETE


@pytest.mark.parametrize("space, named", [
    ({"model.quantizer.normalisation": "choice(none, l2)"}, "model.quantizer.normalisation"),
    ({"model.quantizer.codebook_size": "choice(16, many)"}, "model.quantizer.codebook_size"),
    ({"model.quantizer.normalization": "choice(none, l2"}, "model.quantizer.normalization"),
])
def test_search_space_typos_are_rejected_before_any_trial(tmp_path, capsys, space, named):
    path = sweep_file(tmp_path, space)
    assert sweep(path, tmp_path) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "tiny_sweep").exists()  # no storage, no trial directory


def test_shipped_sweep_files_parse_and_their_keys_exist():
    from codec.sweep.config import load_sweep
    from codec.sweep.study import make_pruner, make_sampler
    from codec.sweep.trial import validate_space

    names = sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml"))
    assert names == ["loss", "normalization", "phases", "quantizer", "structure"]
    for name in names:
        s = load_sweep(REPO / "sweeps" / f"{name}.yaml")
        make_sampler(s), make_pruner(s)
        validate_space(s)  # raises naming the entry on an unknown key
