"""`codec sweep` end to end at the TINY size: resuming (after a kill -9 too), parallel workers and
concurrent starts, failed and pruned trials, seeds and the results a researcher can trust, W&B runs,
typos rejected before any trial."""

import csv
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from lightning.pytorch.callbacks import Callback
from optuna.trial import TrialState

from codec.diagnostics import Verdict
from codec.runs import last_value, read_metrics
from codec.sweep.command import main
from codec.sweep.config import load_sweep

from helpers import TINY
from sweep_workers import start_together

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
        assert config["run"]["tags"] == ["sweep:normalization", arm, "seed:0"]
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
    path = sweep_file(tmp_path, {"model.structure.final_conv": "choice(bogus, none)"})  # grid order: bogus first
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


class HoldTrialOne(Callback):
    """In trial 1 only, from step 2 on: writes its pid to $CODEC_TEST_MARKER (once) and slows each
    step down, so that the test can kill the worker process in the middle of the trial."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        marker = os.environ.get("CODEC_TEST_MARKER")
        if marker and "trial_0001" in str(trainer.log_dir) and trainer.global_step >= 2:
            if not Path(marker).exists():
                Path(marker).write_text(str(os.getpid()))
            time.sleep(0.5)


def wait_for(marker: Path, process: subprocess.Popen, timeout: float = 600) -> int:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, f"the sweep ended before the marker: {process.communicate()}"
        assert time.monotonic() < deadline, "no marker"
        time.sleep(0.1)
    time.sleep(0.2)  # the pid is written in one go; let the write finish
    return int(marker.read_text())


def start_held_sweep(tmp_path: Path, *options: str) -> tuple[Path, Path, subprocess.Popen]:
    """`codec sweep` of 4 normalization arms (3 trials wanted) as a user starts it, with trial 1 held
    by HoldTrialOne: (sweep file, the marker its worker writes its pid to, the process)."""
    path = sweep_file(tmp_path, {"model.quantizer.normalization": "choice(none, zscore, l2, rms_scale)"}, steps=6,
                      trials=3, overrides=[*QUICK, "--trainer.callbacks+=test_sweep.HoldTrialOne"])
    marker = tmp_path / "worker.pid"
    env = {**os.environ, "CODEC_TEST_MARKER": str(marker), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "codec.cli", "sweep", str(path), f"--root={tmp_path}",
                                "--no-wandb", *options], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    return path, marker, process


def test_a_sweep_killed_mid_trial_resumes_to_every_arm_in_one_rerun(tmp_path):
    # Grid of 4 arms, 3 wanted (the case: one grid point stays unvisited).
    path, marker, process = start_held_sweep(tmp_path)
    worker = wait_for(marker, process)
    assert worker == process.pid  # with one job the command itself is the worker
    os.kill(worker, signal.SIGKILL)
    process.communicate(timeout=60)
    killed = {t.number: t.state for t in load(tmp_path, "tiny_sweep").trials}
    assert killed[0] == TrialState.COMPLETE and killed[1] == TrialState.RUNNING  # the zombie

    # Re-run at once (well inside Optuna's heartbeat grace): the zombie is failed and re-run.
    assert sweep(path, tmp_path) == 0
    trials = load(tmp_path, "tiny_sweep").trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    arms_done = sorted(t.params["model.quantizer.normalization"] for t in complete)
    assert arms_done == ["l2", "none", "zscore"]  # every planned arm once: none lost, none twice
    (zombie,) = [t for t in trials if t.state == TrialState.FAIL]
    assert zombie.number == 1 and zombie.params["model.quantizer.normalization"] == "zscore"
    (retry,) = [t for t in complete if t.user_attrs.get("retry_of") == 1]
    assert retry.params == zombie.params and Path(retry.user_attrs["run_dir"], "metrics.csv").is_file()
    results = (tmp_path / "tiny_sweep" / "results.md").read_text()
    assert "| rms_scale | - | - | not run |" in results and "| 1 | interrupted | zscore |" in results


def test_sweeps_started_together_create_the_storage_once_and_never_take_a_trial_twice(tmp_path):
    path = sweep_file(tmp_path, {"model.quantizer.normalization": "choice(none, zscore, l2, rms_scale)"}, trials=4)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=start_together, args=(str(path), str(tmp_path), barrier, results))
               for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    taken = [results.get(timeout=10) for _ in workers]
    assert all(isinstance(t, list) for t in taken), taken  # no IntegrityError on the fresh storage
    assert sorted(n for t in taken for n in t) == list(range(8))  # 4 arms x 2 seeds, each queued and taken once
    trials = load(tmp_path, "tiny_sweep").trials
    assert len(trials) == 8 and all(t.state == TrialState.RUNNING for t in trials)


def test_storage_creation_retries_when_another_process_made_the_tables_first(tmp_path, monkeypatch):
    from sqlalchemy.exc import IntegrityError

    from codec.sweep import storage

    calls, real = [], storage.RDBStorage

    def racing(*args, **kwargs):  # as PostgreSQL answers the loser of the race
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, "RDBStorage", racing)
    assert storage.open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}") is not None and len(calls) == 2


def test_each_trial_is_its_own_wandb_run_grouped_by_sweep_and_tagged_by_arm(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    started, init = [], wandb.init
    monkeypatch.setattr(wandb, "init", lambda *a, **k: started.append(init(*a, **k)) or started[-1])
    path = sweep_file(tmp_path, {"model.quantizer.normalization": "choice(none, zscore)"})
    assert main(["sweep", str(path), f"--root={tmp_path}"]) == 0  # W&B on
    assert wandb.run is None  # nothing left open for the next trial or test
    trials = sorted(load(tmp_path, "tiny_sweep").trials, key=lambda t: t.number)
    assert len(started) == 2 and len({run.id for run in started}) == 2
    for t, run in zip(trials, started, strict=True):
        arm = f"normalization={t.params['model.quantizer.normalization']}"
        assert t.user_attrs["wandb_run"] == run.id
        assert (run.group, run.job_type) == ("tiny_sweep", arm)
        assert {"sweep:tiny_sweep", arm, "seed:0"} <= set(run.tags)
        assert run.config["quantizer"]["normalization"] == t.params["model.quantizer.normalization"]  # its own config
        assert len(list(Path(t.user_attrs["run_dir"], "wandb").glob(f"offline-run-*-{run.id}"))) == 1


def test_seeds_give_each_arm_a_mean_and_an_interval_and_every_grid_arm_is_shown(tmp_path):
    path = sweep_file(tmp_path, {"model.quantizer.normalization": "choice(none, zscore, l2)"}, trials=2)
    assert sweep(path, tmp_path, "--seeds=2") == 0
    trials = load(tmp_path, "tiny_sweep").trials
    pairs = sorted((t.params["model.quantizer.normalization"], t.user_attrs["seed"]) for t in trials)
    assert pairs == [("none", 0), ("none", 1), ("zscore", 0), ("zscore", 1)]
    seeds = {(t.params["model.quantizer.normalization"], t.user_attrs["seed"]):
             yaml.safe_load(Path(t.user_attrs["run_dir"], "config.yaml").read_text())["seed_everything"] for t in trials}
    assert all(seed == k for (_, k), seed in seeds.items())  # replicate k trains with seed_everything=k
    with (tmp_path / "tiny_sweep" / "arms.csv").open() as f:
        arms = {r["arm"]: r for r in csv.DictReader(f)}
    for arm in ("normalization=none", "normalization=zscore"):
        values = [t.value for t in trials if f"normalization={t.params['model.quantizer.normalization']}" == arm]
        low, high = float(arms[arm]["ci_low"]), float(arms[arm]["ci_high"])
        mean = sum(values) / 2
        half = 12.706 * abs(values[0] - values[1]) / 2  # t(0.975, 1 df) x the standard error of two values
        assert float(arms[arm]["mean"]) == pytest.approx(mean)
        assert (low, high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert arms["normalization=l2"]["seeds"] == "not run" and arms["normalization=l2"]["mean"] == ""
    results = (tmp_path / "tiny_sweep" / "results.md").read_text()
    assert "| l2 | - | - | not run |" in results
    assert "Within noise" in results or "ahead beyond noise" in results


def test_the_noise_note_says_when_the_best_two_arms_overlap():
    from codec.sweep.results import Arm, interval, noise_note

    sweep = load_sweep(REPO / "sweeps" / "normalization.yaml")

    def arm(label, *values):
        return Arm({}, label, [{"state": "complete", "objective": v, "seed": i} for i, v in enumerate(values)])

    assert interval([1.0, 2.0, 3.0]) == (pytest.approx(2 - 4.303 / 3 ** 0.5), pytest.approx(2 + 4.303 / 3 ** 0.5))
    close = [arm("a", 10.0, 10.2, 10.1), arm("b", 10.05, 9.9, 10.0)]
    assert noise_note(close, sweep).startswith("Within noise")
    apart = [arm("a", 12.0, 12.1, 12.05), arm("b", 10.0, 10.1, 10.05)]
    assert noise_note(apart, sweep).startswith("The best arm is ahead beyond noise")
    assert noise_note([arm("a", 10.1), arm("b", 10.0)], sweep).startswith("Cannot tell a (10.1) from b (10)")


def test_the_objective_plot_does_not_zoom_a_small_difference_into_a_cliff(tmp_path, monkeypatch):
    import matplotlib.figure

    from codec.sweep.results import Arm, plot_objective

    sweep = load_sweep(REPO / "sweeps" / "normalization.yaml").with_overrides(root=tmp_path)
    ranked = [Arm({"model.quantizer.normalization": n}, f"normalization={n}",
                  [{"state": "complete", "objective": v, "seed": i} for i, v in enumerate(values)])
              for n, values in (("l2", [5.05, 5.06]), ("none", [5.0, 5.01]), ("zscore", []))]
    drawn, save = [], matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig.axes[0]), save(fig, *a, **k))[1])
    (path,) = plot_objective(ranked, sweep, tmp_path)
    assert path.name == "objective_by_normalization.png"
    (ax,) = drawn
    low, high = ax.get_ylim()
    assert high - low >= 3.0 and low < 5.0 and high > 5.06  # 0.05 dB stays a small step on a 3 dB axis
    assert ax.get_ylabel() == "SNR (dB)"
    bars = [c for c in ax.containers if c.__class__.__name__ == "ErrorbarContainer"]
    assert len(bars) == 2  # a mean with its interval per arm that ran


def test_a_mistyped_objective_is_rejected_before_any_trial_trains(tmp_path, capsys):
    path = sweep_file(tmp_path, {"model.quantizer.normalization": "choice(none, zscore)"},
                      objective={"metric": "val/audio/snr_dB", "direction": "maximize"})
    assert sweep(path, tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert "'val/audio/snr_dB'" in err and "did you mean 'val/audio/snr_db'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "tiny_sweep").exists()  # no storage, no trial directory


def test_yaml_syntax_errors_and_missing_studies_are_one_line_messages(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("base: conf/waveform_l1.yaml\nspace:\n  model.quantizer.normalization: [none, l2\ntrials: 2\n")
    assert sweep(path, tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"codec sweep: {path}: line 4, column 7: YAML syntax:") and len(err.splitlines()) == 1
    shipped = REPO / "sweeps" / "normalization.yaml"
    assert sweep(shipped, tmp_path, "--report") == 2
    assert capsys.readouterr().err.strip() == (f"codec sweep: no study 'normalization' in "
                                               f"sqlite:///{(tmp_path / 'normalization' / 'study.db').resolve()}")


def test_a_worker_killed_mid_trial_is_rerun_by_the_other_worker_of_the_same_command(tmp_path):
    # A 10-minute heartbeat: only the dead-pid check can fail the killed worker's trial in time.
    _, marker, process = start_held_sweep(tmp_path, "-j", "2", "--heartbeat=600")
    try:
        worker = wait_for(marker, process)
        assert worker != process.pid  # one of the command's two worker processes
        os.kill(worker, signal.SIGKILL)
        output = process.communicate(timeout=300)[0]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    # The other worker saw the dead pid, failed the trial, queued it again and ran it: the command
    # ends complete, and says what happened.
    assert process.returncode == 0, output
    assert "interrupted trial(s) 1 queued again" in output and "re-ran its trial" in output
    trials = load(tmp_path, "tiny_sweep").trials
    complete = sorted(t.params["model.quantizer.normalization"] for t in trials if t.state == TrialState.COMPLETE)
    assert complete == ["l2", "none", "zscore"]
    (zombie,) = [t for t in trials if t.state == TrialState.FAIL]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == zombie.number]
    assert zombie.number == 1 and retry.state == TrialState.COMPLETE and retry.params == zombie.params


def test_a_killed_worker_is_dead_before_it_is_reaped_and_only_on_its_own_machine():
    import psutil

    from codec.sweep.study import is_orphaned, this_machine

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        identity = {**this_machine(), "pid": child.pid, "started": psutil.Process(child.pid).create_time()}
        running = SimpleNamespace(state=TrialState.RUNNING, user_attrs={"worker": identity})
        assert not is_orphaned(running)
        child.kill()
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:  # a -j worker its command has not joined
            time.sleep(0.05)
        assert is_orphaned(running)
        elsewhere = {**identity, "host": "another-machine"}  # only Optuna's heartbeat can judge those
        assert not is_orphaned(SimpleNamespace(state=TrialState.RUNNING, user_attrs={"worker": elsewhere}))
    finally:
        child.kill()
        child.wait()


def test_a_sampled_sweep_queues_each_new_arm_s_other_seeds_once(tmp_path):
    path = sweep_file(tmp_path, {"optimizer.init_args.lr": "tag(log, interval(1e-4, 1e-2))"}, trials=2, seeds=2,
                      sampler={"name": "RandomSampler"})
    assert sweep(path, tmp_path) == 0
    trials = load(tmp_path, "tiny_sweep").trials
    ran = [t for t in trials if "skipped" not in t.user_attrs]
    assert len(ran) == 4 and all(t.state == TrialState.COMPLETE for t in ran)
    by_arm: dict[float, list[int]] = {}
    for t in ran:
        by_arm.setdefault(t.params["optimizer.init_args.lr"], []).append(t.user_attrs["seed"])
    assert len(by_arm) == 2 and all(sorted(seeds) == [0, 1] for seeds in by_arm.values())


def test_an_unreachable_database_stops_the_sweep_in_one_line_without_its_password(tmp_path, capsys):
    path = sweep_file(tmp_path, {"model.quantizer.normalization": "choice(none, zscore)"})
    url = "postgresql://codec:secret-word@127.0.0.1:1/sweeps"  # nothing listens on port 1
    assert sweep(path, tmp_path, f"--storage={url}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codec sweep: cannot open storage postgresql://codec:***@127.0.0.1:1/sweeps: ")
    assert len(err.splitlines()) == 1 and "secret-word" not in err
    assert not (tmp_path / "tiny_sweep").exists()  # nothing trained, nothing written
