"""EMA codebook updates (F6), k-means init (F8) and dead-code replacement, against the references' traps."""

import pytest
import torch

from codec.quantize import ResidualVQ
from codec.quantize import codebook as codebook_module
from codec.quantize.ema import SCATTER_MIN_ELEMENTS, assignment_sums, ema_update_, laplace_smoothed

from helpers import as_frames, clustered


def ema_rvq(num_codes=4, dim=8, **kw):
    kw = {"init": "random", "dead_code_threshold": 0.0, "decay": 0.8, **kw}
    return ResidualVQ(dim=dim, num_quantizers=1, codebook_size=num_codes, update="ema", **kw).train()


def ema_error_after_training(steps=60):
    """Distance from each codeword to its cluster mean after EMA training from a perturbed start."""
    points, centres, _ = clustered(4, 8, per_cluster=64, spread=0.3, scale=5.0)
    rvq = ema_rvq()
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
    real = codebook_module.ema_update_

    def averages_quantized(codebook, cluster_size, embed_sum, inputs, codes, decay, eps=1e-5):
        return real(codebook, cluster_size, embed_sum, codebook[codes].clone(), codes, decay, eps)

    monkeypatch.setattr(codebook_module, "ema_update_", averages_quantized)
    error, start_error = ema_error_after_training()
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
    book, size, embed_sum = torch.zeros(4, 2), torch.zeros(4), torch.zeros(4, 2)
    ema_update_(book, size, embed_sum, torch.ones(3, 2), torch.tensor([0, 0, 2]), decay=0.9)
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
        def _init_from_data(self, rows):
            super()._init_from_data(rows)
            self.embed_sum.copy_(self.codebook)  # the references' init

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


@pytest.mark.parametrize("rows", [50, 2 * SCATTER_MIN_ELEMENTS // 16])  # both accumulation paths
def test_assignment_sums_are_the_per_code_sums_of_the_assigned_rows(rows):
    torch.manual_seed(0)
    inputs, codes = torch.randn(rows, 16), torch.randint(0, 32, (rows,))
    codes[:5] = 3  # repeated codes must accumulate, not overwrite
    counts, sums = assignment_sums(inputs, codes, 32)
    for k in (0, 3, 31):
        assert counts[k] == (codes == k).sum()
        assert torch.allclose(sums[k], inputs[codes == k].sum(dim=0), atol=1e-4)
