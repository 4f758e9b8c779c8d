"""EMA codebook updates (F6), k-means init (F8) and dead-code replacement, against the references' traps."""

import pytest
import torch

from codec.quantize import ResidualVQ, updates
from codec.quantize import codebook as codebook_module
from codec.quantize.updates import (
    LevelState,
    StepStatistics,
    UpdateRule,
    assignment_sums,
    code_histograms,
    laplace_smoothed,
    updated_state,
)

from helpers import as_frames, clustered


def ema_rvq(num_codes=4, dim=8, **kw):
    kw = {"init": "random", "dead_code_threshold": 0.0, "decay": 0.8, **kw}
    return ResidualVQ(dim=dim, num_quantizers=1, codebook_size=num_codes, update="ema", **kw).train()


def ema_error_after_training(steps=60, rvq=None):
    """Distance from each codeword to its cluster mean after EMA training from a perturbed start."""
    points, centres, _ = clustered(4, 8, per_cluster=64, spread=0.3, scale=5.0)
    rvq = rvq or ema_rvq()
    level = rvq.levels[0]
    start = centres + 1.5 * torch.randn_like(centres) / 8**0.5  # each code nearest its own cluster
    level.codebook.copy_(start)
    level.embed_sum.copy_(start)
    for _ in range(steps):
        rvq(as_frames(points[torch.randperm(len(points))], batch=4))
    # True means of the generated points, not the nominal centres.
    codes = rvq.encode(as_frames(points, 1))[0].flatten()
    means = torch.stack([points[codes == k].mean(0) for k in range(4)])
    start_error = (start - means).norm(dim=1).max()
    return (level.codebook - means).norm(dim=1).max(), start_error


def test_ema_codewords_converge_to_the_cluster_means():
    error, start_error = ema_error_after_training()
    assert start_error > 1.0
    assert error < 0.02


def test_f6_ema_of_quantized_vectors_fails_the_same_check(monkeypatch):
    """The reports' bug: averaging the codewords themselves. The codebook never moves."""
    rvq = ema_rvq()
    real = updates.assignment_sums

    def averages_quantized(inputs, codes, codebook_size, row_mask=None, out=None):
        return real(rvq.levels[0].codebook[codes].clone(), codes, codebook_size, row_mask, out)

    monkeypatch.setattr(updates, "assignment_sums", averages_quantized)
    error, start_error = ema_error_after_training(rvq=rvq)
    assert error > 0.5 * start_error


def test_ema_codebook_gets_no_gradient_from_any_loss():
    rvq = ema_rvq()
    z = torch.randn(2, 8, 6, requires_grad=True)
    out = rvq(z)
    (out.losses["commit"] + out.quantized.pow(2).sum()).backward()
    assert rvq.levels[0].codebook.grad is None
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_laplace_smoothing_keeps_unused_codes_finite_and_the_total_fixed():
    counts = torch.tensor([10.0, 0.0, 5.0, 0.0])
    smoothed = laplace_smoothed(counts)
    assert (smoothed > 0).all()
    assert torch.isclose(smoothed.sum(), counts.sum())
    # One EMA step from an empty state: codes 0 and 2 move onto their inputs, 1 and 3 stay finite.
    state = LevelState(codebook=torch.zeros(1, 4, 2), cluster_size=torch.zeros(1, 4), embed_sum=torch.zeros(1, 4, 2),
                       input_scale=torch.zeros(1), trained_steps=torch.zeros(1, dtype=torch.long),
                       rejected_updates=torch.zeros(1, dtype=torch.long))
    inputs, codes = torch.ones(3, 2), torch.tensor([0, 0, 2])
    stats = StepStatistics(counts=code_histograms(codes[:, None], 4).float(),
                           sums=assignment_sums(inputs, codes, 4)[None], low=torch.ones(1), high=torch.ones(1),
                           candidates=None, valid=None)
    book = updated_state(state, stats, UpdateRule(ema=True, decay=0.9, eps=1e-5, dead_code_threshold=0.0)).state.codebook[0]
    assert torch.isfinite(book).all()
    assert torch.allclose(book[0], torch.ones(2), atol=1e-3) and torch.allclose(book[2], torch.ones(2), atol=1e-3)


def test_kmeans_init_keeps_the_codebook_scale_across_the_first_ema_update():
    """vector-quantize-pytorch #66: storing the means (not means * counts) shrinks every code."""
    points, _, _ = clustered(16, 8, per_cluster=40, scale=3.0)
    z = as_frames(points, batch=4)

    def first_step_ratio(rvq):
        rvq(z)  # k-means init and the first EMA step, in one training forward
        level = rvq.levels[0]
        return float(level.codebook.norm(dim=1).mean() / level.initial_codebook.norm(dim=1).mean())

    ours = first_step_ratio(ema_rvq(num_codes=16, init="kmeans", decay=0.99))
    assert 0.95 < ours < 1.05

    class MeansOnly(codebook_module.Codebook):
        def init_from_data(self, x, row_mask=None):
            done = super().init_from_data(x, row_mask)
            self.embed_sum.copy_(self.codebook)  # the references' init
            return done

    broken = ema_rvq(num_codes=16, init="kmeans", decay=0.99)
    broken.levels[0].__class__ = MeansOnly
    assert first_step_ratio(broken) < 0.5


def test_dead_codes_really_move_to_recent_inputs_and_stay_there():
    """encodec #61: the replacement is overwritten by the EMA normalisation of the same step."""
    points, _, _ = clustered(4, 8, per_cluster=50, scale=3.0)
    z = as_frames(points, batch=4)
    rvq = ema_rvq(num_codes=8, init="kmeans", dead_code_threshold=2.0, decay=0.99)
    rvq(z)  # init
    level = rvq.levels[0]
    far = torch.full((8,), 1000.0)
    level.codebook[7] = far
    level.embed_sum[7] = far * 0.1
    level.cluster_size[7] = 0.1  # EMA usage below the threshold: dead
    rvq(z)
    moved = level.codebook[7]
    assert (moved - points).norm(dim=1).min() < 1e-5, "dead code was not moved onto an input"
    rvq(z)  # the next EMA step keeps it on the data
    assert (level.codebook[7] - points).norm(dim=1).min() < 1.0
    assert level.last_dead_count is not None and level.last_dead_count >= 1


def test_dead_code_replacement_off_leaves_unused_codes_alone():
    points, _, _ = clustered(4, 8, per_cluster=50, scale=3.0)
    rvq = ema_rvq(num_codes=8, dead_code_threshold=0.0)
    level = rvq.levels[0]
    far = torch.full((8,), 1000.0)
    level.codebook[7] = far
    level.embed_sum[7] = far
    rvq(as_frames(points, batch=4))
    assert torch.allclose(level.codebook[7], far, rtol=1e-3)


@pytest.mark.parametrize("rows", [50, 20000])
def test_counts_and_sums_are_those_of_the_assigned_rows_that_use_the_level(rows):
    torch.manual_seed(0)
    inputs, codes = torch.randn(rows, 16), torch.randint(0, 32, (rows,))
    codes[:5] = 3  # repeated codes must accumulate, not overwrite
    used = torch.rand(rows) < 0.7  # quantizer dropout: the other rows count for nothing
    sums = assignment_sums(inputs, codes, 32, used)
    counts = code_histograms(torch.stack([codes, codes.flip(0)], dim=1), 32, torch.stack([used, used.flip(0)], dim=1))
    assert counts.shape == (2, 32) and counts.dtype == torch.int64
    assert torch.equal(counts[0], counts[1])  # each level's own codes and rows
    for k in (0, 3, 31):
        assert counts[0, k] == ((codes == k) & used).sum()
        assert torch.allclose(sums[k], inputs[(codes == k) & used].sum(dim=0), atol=1e-4)


# --------------------------------------------------------------------- non-finite updates (issue 11)


def held_out_error(rvq, points):
    rvq.eval()
    z = as_frames(points, batch=1)
    error = float((rvq(z).quantized - z).pow(2).mean())
    rvq.train()
    return error


@pytest.mark.parametrize("update", ["ema", "gradient"])
def test_huge_finite_inputs_never_poison_the_codebook(update):
    """3e38 is finite, so no input check stops it, but its sums overflow: before, `embed_sum` became
    inf and the codebook NaN for good. Now those codes keep their state and the update is counted."""
    points, _, _ = clustered(8, 8, per_cluster=64, spread=0.3, scale=3.0)
    rvq = ResidualVQ(dim=8, num_quantizers=2, codebook_size=16, update=update, dead_code_threshold=0.5)
    for _ in range(5):
        rvq(as_frames(points[torch.randperm(len(points))], batch=4))
    before = held_out_error(rvq, points)

    z = as_frames(points, batch=4)
    z[0, :, :6] = 3e38  # finite, near the float32 limit
    z[1, :2, :3] = -3e38
    rvq(z)
    for level in rvq.levels:
        for name, tensor in level.state_dict().items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all(), name
        assert torch.isfinite(level.codebook.pow(2).sum(dim=1)).all()  # usable by the lookup
    if update == "ema":
        assert int(rvq.levels[0].rejected_updates) > 0
        assert rvq.level_stats()[0].rejected_updates == int(rvq.levels[0].rejected_updates)

    for _ in range(5):  # and it keeps training on normal inputs
        rvq(as_frames(points[torch.randperm(len(points))], batch=4))
    assert held_out_error(rvq, points) < 1.5 * before + 1e-3


def test_deferred_finite_check_lets_nan_move_nothing():
    """On a GPU the default check is deferred (no host sync): NaN input quantizes without an error,
    but cannot move any code or usage, and the rejections are counted."""
    points, _, _ = clustered(4, 8, per_cluster=32, scale=3.0)
    rvq = ResidualVQ(dim=8, num_quantizers=2, codebook_size=8, check_finite="deferred", dead_code_threshold=0.5)
    z = as_frames(points, batch=4)
    z[0, 3, :4] = float("nan")  # at the very first step: k-means skips those rows
    rvq(z)
    z[1, :, 2] = float("inf")
    out = rvq(z)
    assert not torch.isfinite(out.losses["commit"])  # the loss shows it
    for level in rvq.levels:
        for name, tensor in level.state_dict().items():
            if tensor.is_floating_point():
                assert torch.isfinite(tensor).all(), name
    assert int(rvq.levels[0].rejected_updates) > 0
