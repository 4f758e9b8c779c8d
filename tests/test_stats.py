"""Per-level statistics that the callbacks read, and the schedule arithmetic (F1, F2)."""

import math

import pytest
import torch

from codec.quantize import ResidualVQ, codebook_utilization, perplexity, progressive_num_active
from codec.quantize.stats import distance_from_init


def test_perplexity_counts_equally_used_codes():
    assert perplexity(torch.tensor([5, 5, 5, 5])) == pytest.approx(4.0)
    assert perplexity(torch.tensor([0, 9, 0, 0])) == pytest.approx(1.0)
    assert perplexity(torch.zeros(4)) == pytest.approx(1.0)
    assert perplexity(torch.tensor([1, 1, 2])) == pytest.approx(2 ** 1.5)


def test_utilization_is_dacs_entropy_ratio():
    uniform, single = torch.ones(16), torch.tensor([1.0] + [0.0] * 15)
    assert codebook_utilization([uniform, uniform], 16) == pytest.approx(100.0)
    assert codebook_utilization([uniform, single], 16) == pytest.approx(50.0)
    h = torch.tensor([3.0, 1.0] + [0.0] * 14)
    bits = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert codebook_utilization([h], 16) == pytest.approx(100 * bits / 4)


def test_level_stats_describe_the_last_forward_and_the_codebook():
    rvq = ResidualVQ(dim=4, num_quantizers=3, codebook_size=8, init="random", dead_code_threshold=0.0)
    rvq.set_num_active(2)
    book = rvq.levels[0].codebook
    z = book[[1, 1, 3, 5]].t().unsqueeze(0).contiguous()  # (1, 4, 4): frames sit on codes 1,1,3,5
    rvq.eval()(z)
    s0, s1, s2 = rvq.level_stats()
    assert s0.histogram.tolist() == [0, 2, 0, 1, 0, 1, 0, 0]
    assert s0.codes_used == 3
    assert s0.perplexity == pytest.approx(2 ** 1.5)
    assert (s0.active, s1.active, s2.active) == (True, True, False)
    assert s2.histogram.sum() == 0 and s2.codes_used == 0
    assert s0.value_min == pytest.approx(float(book.min()))
    assert s0.value_std == pytest.approx(float(book.std()))
    assert s0.norm_max == pytest.approx(float(book.norm(dim=1).max()))
    assert s0.distance_from_init == 0.0 and s0.trained_steps == 0
    assert set(s0.scalars()) >= {"perplexity", "codes_used", "dead_codes", "norm_mean", "value_max"}
    assert rvq.utilization() == pytest.approx(
        codebook_utilization([s0.histogram, s1.histogram], 8))


def test_dead_codes_and_training_progress_are_counted():
    rvq = ResidualVQ(dim=4, num_quantizers=2, codebook_size=64, dead_code_threshold=2.0, decay=0.5)
    rvq.set_num_active(1)
    z = torch.randn(1, 4, 8)  # 8 rows for 64 codes: most codes get no assignment
    for _ in range(5):
        rvq(z)
    s0, s1 = rvq.level_stats()
    assert s0.dead_codes > 32
    assert rvq.levels[0].last_dead_count > 32
    assert s0.trained_steps == 5 and s0.distance_from_init > 0
    assert s1.trained_steps == 0 and s1.distance_from_init == 0 and not s1.initialized


@pytest.mark.parametrize("step, expected", [(0, 1), (1999, 1), (2000, 2), (4000, 3), (10**6, 8)])
def test_progressive_schedule_matches_the_reports_rule(step, expected):
    assert progressive_num_active(step, start=0, every=2000, maximum=8) == expected
    assert expected == min(step // 2000 + 1, 8)


def test_progressive_schedule_with_delayed_start_and_bad_values():
    assert progressive_num_active(999, start=1000, every=100, maximum=4) == 1
    assert progressive_num_active(1250, start=1000, every=100, maximum=4) == 3
    with pytest.raises(ValueError, match="every"):
        progressive_num_active(0, start=0, every=0, maximum=4)


def test_gradient_codebooks_track_usage_for_dead_codes_too():
    rvq = ResidualVQ(dim=4, num_quantizers=1, codebook_size=8, update="gradient", init="random",
                     dead_code_threshold=0.0, decay=0.5)
    level = rvq.levels[0]
    z = level.codebook.detach()[[2, 2, 2, 5]].t().unsqueeze(0).contiguous()  # frames on codes 2 and 5
    rvq(z)
    expected = torch.ones(8) * 0.5  # nominal mass 1, decayed
    expected[2] += 0.5 * 3
    expected[5] += 0.5 * 1
    assert torch.allclose(level.cluster_size, expected)


def test_distance_from_init_is_bounded_when_a_level_starts_at_zero():
    """Deep residuals can start at zero (k-means of identical rows): the figure must stay readable."""
    init = torch.zeros(8, 4)
    assert distance_from_init(init, init) == 0.0
    assert distance_from_init(torch.ones(8, 4), init) == pytest.approx(1.0)
    assert distance_from_init(-torch.ones(8, 4), torch.ones(8, 4)) == pytest.approx(2.0)
