"""`codec reproduce`: the phases as parallel runs, the report beside the reports' outcomes, resuming."""

import json

from codec.reproduce.command import main
from codec.reproduce.runner import configs_for, run_name

from helpers import TINY

OVERRIDES = [t for t in TINY if not t.startswith("--run.wandb")]


def test_two_phases_train_side_by_side_and_the_report_puts_them_beside_the_reports(tmp_path, capsys):
    out = tmp_path / "reproduce"
    args = ["reproduce", "--steps", "6", "--val-every", "3", "--phases", "phase_1,phase_a", "--out", str(out),
            "--jobs", "2", "--", *OVERRIDES]
    assert main(args) == 0
    text = (out / "reproduce.md").read_text()
    assert "| phase_1 | amplitude kept (RMS 0.080)" in text and "| phase_a | collapsed (RMS 0.0037" in text
    assert "Hardware:" in text and "Command: `codec reproduce --steps 6 --val-every 3" in text  # once
    assert "mel distance per band at the last validation: 0-500 Hz " in text and "2000-8000 Hz" in text
    for figure in ("rms_ratio.png", "mel_distance.png", "q0_step_perplexity.png", "level_perplexity.png"):
        assert (out / figure).stat().st_size > 0
    for phase in ("phase_1", "phase_a"):
        summary = json.loads(next((out / "runs" / phase).glob("version_*/summary.json")).read_text())
        assert summary["status"] == "finished" and summary["steps"] == 6
        assert (out / "logs" / f"{phase}.log").is_file()
    config = (next((out / "runs" / "phase_1").glob("version_*")) / "config.yaml").read_text()
    assert "mode: warn" in config  # failures are observed to the end, not stopped
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {"phase_1", "phase_a"} and all(t > 0 for t in timings.values())

    # Again: finished runs are kept, nothing trains, the report is rewritten.
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "phase_1: already finished" in printed and "phase_a: already finished" in printed
    assert len(list((out / "runs" / "phase_1").glob("version_*"))) == 1
    assert main(["reproduce", "--report-only", "--phases", "phase_1,phase_a", "--out", str(out)]) == 0


def test_run_specs_join_config_pieces_and_unknown_configs_are_named(tmp_path, capsys):
    assert [p.name for p in configs_for("phase_1+gan")] == ["phase_1.yaml", "gan.yaml"]
    assert run_name("phase_1+gan") == "phase_1+gan"
    assert main(["reproduce", "--phases", "phase_9", "--out", str(tmp_path)]) == 2
    assert "no config conf/phase_9.yaml" in capsys.readouterr().err


def test_a_run_that_ends_early_with_exit_0_is_not_called_done(tmp_path, monkeypatch):
    """A SIGTERM'd `codec fit` exits 0 with an interrupted summary: reproduce must say so."""
    import sys

    from codec.reproduce import runner

    def fake_fit(run, root):  # what an interrupted fit leaves: summary.json at step 40 of 100
        folder = root / run.name / "version_0"
        summary = json.dumps({"status": "interrupted", "steps": 40})
        return [sys.executable, "-c", f"import pathlib; p = pathlib.Path({str(folder)!r}); "
                f"p.mkdir(parents=True); (p / 'summary.json').write_text({summary!r})"]

    monkeypatch.setattr(runner, "fit_command", fake_fit)
    said = []
    runs = runner.run_all([runner.Run("phase_1", [])], tmp_path / "runs", tmp_path / "logs", steps=100, jobs=1,
                          echo=said.append)
    assert runs[0].returncode == 0 and not runner.finished(tmp_path / "runs" / "phase_1", 100)
    assert "ended before its last step" in said[-1] and "done" not in said[-1]


def test_an_interrupted_run_gets_no_outcome_of_its_phase():
    from codec.reproduce.phases import phase
    from codec.reproduce.report import Observed

    healthy = [(250, 0.9), (500, 1.1)]
    finished = Observed(phase("phase_1"), None, steps=3000, status="finished", ratio=healthy)
    interrupted = Observed(phase("phase_1"), None, steps=737, status="interrupted", ratio=healthy)
    assert (finished.outcome, finished.agrees) == ("kept", "yes")
    assert (interrupted.outcome, interrupted.agrees) == ("interrupted at step 737", "-")


def test_each_run_takes_its_share_of_what_the_command_may_use(monkeypatch, tmp_path):
    # Beside another run (CODEC_PARALLEL_RUNS=2 outside) one run of reproduce gets half the CPUs, not
    # all of them: two threads on a core that is already busy thrashed (149 steps in 20 minutes).
    import sys

    from codec import threads
    from codec.reproduce import runner

    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    assert runner.threads_per_run(1, {}) == 2 and runner.threads_per_run(2, {}) == 1
    assert runner.threads_per_run(1, {"CODEC_PARALLEL_RUNS": "2"}) == 1
    assert runner.threads_per_run(2, {"OMP_NUM_THREADS": "3"}) == 3  # yours wins
    started_with = []
    real_popen = runner.subprocess.Popen

    def popen(*args, env, **kwargs):  # the environment each run's process really gets
        started_with.append((env["CODEC_PARALLEL_RUNS"], env["OMP_NUM_THREADS"]))
        return real_popen(*args, env=env, **kwargs)

    monkeypatch.setenv("CODEC_PARALLEL_RUNS", "2")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner, "fit_command", lambda run, root: [sys.executable, "-c", "pass"])
    monkeypatch.setattr(runner.subprocess, "Popen", popen)
    runner.run_all([runner.Run("phase_1", [])], tmp_path / "runs", tmp_path / "logs", steps=1, jobs=2,
                   echo=lambda _: None)
    assert started_with == [("4", "1")]  # one of 2 runs in this command's half of the 2 CPUs
