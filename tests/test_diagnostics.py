"""The rules of codec.diagnostics on measured trajectories: loud on each failure, silent on healthy runs.

The series below are the ones measured on real-length runs (issue 9 and 10): the rules must flag
the failures within a validation or a window of their onset and say nothing about the healthy ones.
"""

import math
from dataclasses import replace

import pytest
import torch

from codec.diagnostics.amplitude import (
    DC_FRACTION,
    MEL,
    RMS_RATIO,
    RMS_RATIO_NO_DC,
    SHARES,
    TRAIN_RATIO,
    AmplitudeRule,
    AmplitudeTracker,
    StepAmplitude,
    judge_snapshot,
)
from codec.diagnostics.codebook import (
    CodebookRule,
    LevelState,
    dead_code_count,
    judge_level,
    level_state,
    live_value_range,
    usage_perplexity,
)
from codec.diagnostics.consistency import judge_modes
from codec.diagnostics.usage import StepUsage, UsageRule, UsageTracker, perplexities
from codec.diagnostics.verdict import Verdict


def validations(values, every=250, key=RMS_RATIO, start=250, **extra):
    return [(start + i * every, {key: v, **{k: series[i] for k, series in extra.items()}})
            for i, v in enumerate(values)]


def judge(series, rule=None, extra_layers=()):
    tracker = AmplitudeTracker(rule, extra_layers)
    return tracker, [v for step, metrics in series for v in tracker.observe(step, metrics)]


# ---------------------------------------------------------------------------------------- F3


def test_the_swinging_default_recipe_is_not_an_amplitude_failure():
    # phase_1 with lr 2e-3: 0.2-1.6 between validations. Unstable, but neither collapse nor explosion.
    swings = [0.45, 0.86, 1.62, 0.40, 0.22, 0.81, 1.19, 0.61, 0.20, 0.30, 0.21, 1.12, 0.53]
    _, verdicts = judge(validations(swings, **{MEL: [1.66 - 0.05 * i for i in range(13)]}))
    assert verdicts == []


def test_explosion_of_phase_a_v2_is_named_at_the_patience_th_high_validation():
    # phase_a_v2: RMS ratio 7-15 from step 1750 while its mel distance tripled (1.33 -> 3.3).
    ratios = [1.1, 0.9, 1.2, 0.8, 1.0, 1.3, 7.2, 9.5, 12.0, 15.0, 11.0]
    mel = [1.6, 1.5, 1.45, 1.4, 1.36, 1.33, 1.9, 2.4, 2.9, 3.3, 3.2]
    tracker, verdicts = judge(validations(ratios, **{MEL: mel}), AmplitudeRule(patience=2))
    rules = [(v.step, v.rule) for v in verdicts]
    assert rules[0] == (2000, "amplitude.explosion")  # onset at the validation of step 1750; the second high one
    assert "RMS ratio 9.5" in verdicts[0].message and "mel distance 1.6 at the first validation, 2.4 now" in \
        verdicts[0].message
    assert ("amplitude.divergence" in {r for _, r in rules}) and tracker.stop == verdicts[0]


def test_a_single_extreme_validation_is_named_at_once_but_does_not_stop_the_run():
    # phase_b at batch 32: RMS ratio 140-437; a 300-step demo spiked to 11x once.
    tracker, verdicts = judge(validations([0.8, 11.0, 0.9, 1.0]))
    assert [(v.step, v.rule) for v in verdicts] == [(500, "amplitude.explosion")]
    assert "above 10" in verdicts[0].message and tracker.stop is None


def test_collapse_needs_patience_and_is_judged_without_dc():
    falling = [0.8, 0.5, 0.2, 0.09, 0.05, 0.03, 0.02]
    tracker, verdicts = judge(validations(falling, key=RMS_RATIO_NO_DC, **{"train/loss/stft": [
        2.0, 1.8, 1.5, 1.2, 1.0, 0.9, 0.8]}), extra_layers=["final_conv", "post_scale"])
    assert [(v.step, v.failure, v.rule) for v in verdicts] == [
        (1500, "F3", "amplitude.collapse"), (1500, "F4", "amplitude.structure")]
    assert "without DC 0.03" in verdicts[0].message and "train/loss/stft fell 55%" in verdicts[0].message
    assert tracker.collapsed_at_step == 1500 and tracker.stop.rule == "amplitude.collapse"


def test_a_dc_offset_is_named_as_dc_not_as_loudness():
    # A phase_b checkpoint on real speech: 9.3x the input RMS, 0.84 without DC, correlation ~0.
    series = validations([9.3, 9.3], key=RMS_RATIO, **{RMS_RATIO_NO_DC: [0.84, 0.84], DC_FRACTION: [0.99, 0.99],
                                                      "val/audio/correlation": [0.01, 0.02]})
    _, verdicts = judge(series, AmplitudeRule(patience=2))
    assert [v.rule for v in verdicts] == ["amplitude.dc_offset"]
    assert "99% of the output's energy" in verdicts[0].message and "9.3 with the DC, 0.84 without" in \
        verdicts[0].message and "correlation with the input 0.02" in verdicts[0].message


def test_the_validation_before_training_is_a_baseline_only():
    tracker, verdicts = judge([(0, {RMS_RATIO: 40.0, MEL: 5.0}), (250, {RMS_RATIO: 1.0, MEL: 1.5})])
    assert verdicts == [] and tracker.first[RMS_RATIO] == 40.0


def test_non_finite_metrics_and_a_raised_nan_name_the_divergence():
    _, verdicts = judge(validations([1.0, math.nan]))
    assert [v.rule for v in verdicts] == ["amplitude.divergence"]
    tracker = AmplitudeTracker()
    (verdict,) = tracker.diverged(9, "ValueError: ResidualVQ input z contains 320 NaN",
                                  {"train/loss/total": 3.6e12, "train/audio/rms_ratio": 1.3e11}, 0.5)
    assert "learning rate 0.5" in verdict.message and "3.6e+12" in verdict.message and "1.3e+11" in verdict.message
    assert tracker.stop is verdict


def test_tracker_state_round_trips_so_a_resumed_run_raises_nothing_twice():
    tracker, _ = judge(validations([0.05, 0.05, 0.05]))
    resumed = AmplitudeTracker()
    resumed.load_state_dict(tracker.state_dict())
    assert resumed.history == tracker.history
    assert resumed.observe(1000, {RMS_RATIO: 0.05}) == [] and resumed.collapsed_at_step == 750


def test_per_step_amplitude_names_an_explosion_between_two_validations():
    rule = AmplitudeRule(patience_steps=100, warmup_steps=100)
    steps, tracker = StepAmplitude(rule), AmplitudeTracker(rule)
    target = 0.05 * torch.randn(8, 1, 8000)
    found = []
    for step in range(1, 601):
        gain = 1.0 if step < 300 else 20.0  # onset at step 300
        steps.update(gain * target + 0.01 * torch.randn_like(target), target, judged=step >= 100)
        if step % 25 == 0:
            found += tracker.steps(step, steps.read())
    assert [v.rule for v in found] == ["amplitude.explosion"]
    assert 300 < found[0].step <= 300 + 125  # about patience_steps after the onset, well inside 250
    assert "RMS ratio of training batches" in found[0].message


def test_per_step_amplitude_sees_dc_and_skips_silent_batches():
    rule = AmplitudeRule(patience_steps=20, warmup_steps=0)
    steps = StepAmplitude(rule)
    target = 0.05 * torch.randn(4, 1, 4000)
    for _ in range(40):
        steps.update(0.5 + 0.8 * target, target, judged=True)  # a big constant plus a copy at 0.8
    steps.update(torch.ones(4, 1, 4000), torch.zeros(4, 1, 4000), judged=True)  # silent target: ignored
    read = steps.read()
    assert read[SHARES["dc"]] >= 0.8 and read["train/audio/dc_fraction"] > 0.99
    assert read[TRAIN_RATIO] == pytest.approx(0.8, rel=0.01)  # the level without the DC
    (verdict,) = AmplitudeTracker(rule).steps(40, read)
    assert verdict.rule == "amplitude.dc_offset"


def test_eval_snapshot_uses_the_same_bounds_without_patience():
    assert [v.rule for v in judge_snapshot({RMS_RATIO: 0.05})] == ["amplitude.collapse"]
    assert judge_snapshot({RMS_RATIO: 1.1}) == []


def test_bad_amplitude_settings_are_rejected_by_name():
    with pytest.raises(ValueError, match="threshold < 1 < high"):
        AmplitudeRule(high=0.5)
    with pytest.raises(ValueError, match="patience"):
        AmplitudeRule.from_settings({"patience": 0, "mode": "stop"})



@pytest.mark.parametrize("key, value", [("drift_factor", 0.5), ("drift_min_usage", 1.5), ("max_dead_fraction", -0.1),
                                        ("dead_usage_fraction", 1.0), ("min_trained_steps", -1)])
def test_bad_codebook_settings_are_rejected_by_name(key, value):
    with pytest.raises(ValueError, match=f"diagnostics.codebook.{key} must be"):
        CodebookRule.from_settings({key: value, "mode": "warn"})


# ---------------------------------------------------------------------------------------- F1/F2 usage


def histogram(codes, size=256):
    return torch.bincount(torch.as_tensor(codes), minlength=size)


def run_steps(rule, per_step, steps, size=256, activated=0, check_every=25):
    """Feed StepUsage a level whose step `s` uses the codes `per_step(s)`; judge on checking steps."""
    usage, tracker, found = StepUsage(rule, 1, size), UsageTracker(rule, size), []
    for step in range(1, steps + 1):
        judged = 1 if step >= activated + rule.grace_steps else 0
        usage.update(histogram(per_step(step), size)[None], judged)
        if step % check_every == 0:
            found += tracker.steps(step, 0, usage.read(1)[0])
    return found


def test_per_step_collapse_of_phase_b_is_named_although_the_window_union_is_large():
    # From step 1250 level 0 used 3 codes per batch of 200 rows, different ones each batch.
    generator = torch.Generator().manual_seed(0)

    def codes(step):
        if step < 1250:
            return torch.randint(0, 256, (200,), generator=generator)
        three = torch.randint(0, 256, (3,), generator=generator)
        return three[torch.randint(0, 3, (200,), generator=generator)]

    found = run_steps(UsageRule(), codes, 1800)
    assert [v.rule for v in found] == ["usage.per_step"]
    assert 1250 < found[0].step <= 1250 + 150  # within 250 steps of the onset
    union = torch.unique(torch.cat([codes(s) for s in range(1551, 1801)])).numel()
    assert union > 150  # what the window's union saw: nothing wrong
    assert UsageTracker(UsageRule(), 256).window(1800, 0, union, 250, 1) == []


def test_a_level_used_on_few_codes_by_nature_is_not_flagged():
    # A classifier with one frame per item and 4 classes: 4 codes per batch of 32 is its healthy use.
    generator = torch.Generator().manual_seed(0)
    found = run_steps(UsageRule(), lambda s: torch.randint(0, 4, (32,), generator=generator), 1000, size=8)
    assert found == []


def test_a_drop_relative_to_the_levels_own_history_counts():
    generator = torch.Generator().manual_seed(0)

    def codes(step):  # healthy at ~250, then ~6 codes out of 3200 rows: above the floor, far below its past
        n = 250 if step < 600 else 6
        return torch.randint(0, n, (3200,), generator=generator)

    found = run_steps(UsageRule(capacity_fraction=0.0), codes, 900, size=1024)
    assert [v.rule for v in found] == ["usage.per_step"] and 600 < found[0].step <= 750


def test_a_window_that_started_before_activation_says_nothing_and_a_dead_level_after_it_does():
    tracker = UsageTracker(UsageRule(), 256)
    assert tracker.window(2250, 1, 0, 250, 2)[0].failure == "F1"
    assert tracker.window(2250, 2, 1, 250, 3)[0].failure == "F2"
    assert tracker.window(2250, 3, 40, 250, 4) == []


def test_validation_usage_uses_the_same_bound():
    tracker = UsageTracker(UsageRule(), 256)
    (verdict,) = tracker.validation(199, 0, 1.18, 800)  # the 300-step demo: q0 at 2 codes on validation
    assert verdict.rule == "usage.validation" and "perplexity 1.18" in verdict.message
    assert tracker.validation(199, 1, 12.0, 800) == []


def test_perplexities_match_the_definition():
    ppl, rows, used = perplexities(torch.stack([histogram([0, 1, 2, 3], 8), histogram([5, 5, 5, 5], 8)]))
    assert ppl.tolist() == pytest.approx([4.0, 1.0]) and rows.tolist() == [4, 4] and used.tolist() == [4, 1]


# ---------------------------------------------------------------------------------------- F2 state


def state(**changes):
    base = dict(level=0, active=True, initialized=True, trained_steps=1000, codebook_size=1024, value_min=-4.0,
                value_max=4.2, input_scale=4.5, dead_codes=10, reseeding=True)
    return LevelState(**{**base, **changes})


def test_drift_is_judged_against_the_levels_own_input_scale():
    assert judge_level(state(), 3000) == []
    assert judge_level(state(value_min=-2.39, value_max=1.6, input_scale=0.793), 3000) == []  # CI's healthy 3.0x
    (verdict,) = judge_level(state(value_min=-72.2, value_max=69.6), 3000)  # the reports' Q0
    assert verdict.rule == "codebook.drift" and "16.0x the largest |input|" in verdict.message
    assert judge_level(state(value_min=-72.2, value_max=69.6, input_scale=None), 3000) == []  # no evidence
    assert judge_level(state(value_min=-72.2, value_max=69.6, trained_steps=100), 3000) == []  # too early


def test_drift_is_judged_on_the_codes_in_use_not_on_stale_dead_codes():
    # A healthy deep level: its residual shrank to +-0.8 and the codes it stopped picking kept
    # their early values; the codes in use are fine.
    book = torch.rand(16, 4) * 1.6 - 0.8
    usage = torch.full((16,), 1.0)
    book[3] = -5.0  # stale
    usage[3] = 0.0
    assert live_value_range(book, usage) == pytest.approx((float(book[usage > 0].min()), float(book[usage > 0].max())))
    stale = level_state(3, True, book, usage, True, 1000, 0.8, True)
    assert stale.dead_codes == 1 and judge_level(stale, 250) == []
    usage[3] = 1.0  # the same far code in use is drift
    (verdict,) = judge_level(level_state(3, True, book, usage, True, 1000, 0.8, True), 250)
    assert verdict.rule == "codebook.drift" and "6.2x the largest |input|" in verdict.message
    assert live_value_range(book, torch.zeros(16)) == (float(book.min()), float(book.max()))  # none in use: all


def test_one_outlier_code_is_not_drift_but_a_share_of_the_usage_is():
    # The healthy phase_1 + gan run (seed 2, step 1750): on each deep level one code served an outlier
    # frame, at 7-12x the input scale and 0.15x the mean usage (0.06 % of the level's assignments).
    book = torch.rand(256, 8) * 0.6 - 0.3
    usage = torch.full((256,), 1.0)
    book[7], usage[7] = 2.7, 0.15
    outlier = level_state(2, True, book, usage, True, 1750, 0.376, True)
    assert outlier.value_absmax == pytest.approx(2.7) and outlier.drifted_usage == pytest.approx(0.15 / 255.15)
    assert judge_level(outlier, 1750) == []
    # A drifting codebook moves the codes in use together: 20 of 256 far codes are 7.8 % of the usage.
    book[:20], usage[:20] = 2.7, 1.0
    (verdict,) = judge_level(level_state(2, True, book, usage, True, 1750, 0.376, True), 1750)
    assert verdict.rule == "codebook.drift" and "take 8% of its usage" in verdict.message
    assert verdict.evidence["drifted_usage"] == pytest.approx(20 / 256)
    # The share is a setting; a state without it (a run logged before it existed) is judged on the range alone.
    assert judge_level(outlier, 1750, CodebookRule(drift_min_usage=0.0))
    assert judge_level(replace(outlier, drifted_usage=None), 1750)


def test_replay_reads_the_logged_share_of_the_far_codes():
    from codec.diagnostics.replay import replay

    logged = {"step": 1750, "train/codebook/q2/value_min": -2.7, "train/codebook/q2/value_max": 2.57,
              "train/codebook/q2/input_scale": 0.376, "train/codebook/q2/trained_steps": 1750}
    config = {"model": {"quantizer": {"codebook_size": 256}}}
    assert replay([{**logged, "train/codebook/q2/drifted_usage": 0.0006}], config) == []  # the outlier's code
    (verdict,) = replay([{**logged, "train/codebook/q2/drifted_usage": 0.2}], config)
    assert verdict.rule == "codebook.drift" and verdict.step == 1750
    assert [v.rule for v in replay([logged], config)] == ["codebook.drift"]  # logged before the share existed


def test_dead_codes_are_relative_to_the_levels_mean_usage():
    usage = torch.full((1024,), 0.05)  # 200 rows per step over 1024 codes: each code rarely, none dead
    assert dead_code_count(usage) == 0
    usage[:867] = 1e-6  # the reports' Q0: 867 of 1024 dead
    assert dead_code_count(usage) == 867
    (verdict,) = judge_level(state(dead_codes=867), 3000)
    assert verdict.rule == "codebook.dead_codes" and "867/1024" in verdict.message
    assert usage_perplexity(torch.tensor([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2.0)
    assert CodebookRule.from_settings({"drift_factor": 5, "every_n_steps": 10}).drift_factor == 5


# ---------------------------------------------------------------------------------------- F7


def test_train_vs_eval_rule():
    row = {"perplexity_train_mode": 150.0, "perplexity_eval_mode": 1.06, "codes_used_train_mode": 183.0,
           "codes_used_eval_mode": 2.0, "agreement": 0.01}
    verdict = judge_modes(500, 0, row)
    assert verdict.failure == "F7" and "perplexity 1.06 in eval vs 150.0" in verdict.message
    assert judge_modes(500, 0, {**row, "perplexity_eval_mode": 140.0}) is None


def test_a_verdict_line_points_to_the_shipped_failure_page():
    verdict = Verdict("F2", 10, "Q0 has 900/1024 dead codes", "re-seed", "codebook.dead_codes", "q0")
    assert verdict.line().endswith("(see docs/failure-modes.md#f2)")
    assert Verdict.from_dict({**verdict.to_dict(), "unknown": 1}) == verdict


def test_a_refused_codebook_update_is_named_at_once():
    (verdict,) = judge_level(state(rejected_updates=3, trained_steps=5), 40)
    assert (verdict.failure, verdict.rule) == ("F3", "codebook.non_finite_update") and "refused 3" in verdict.message
