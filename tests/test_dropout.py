"""Quantizer dropout samples which items drop, and an explicit level count is honoured in every mode."""

import torch

from codec.quantize import ResidualVQ, frozen_codebooks
from codec.quantize.dropout import sample_levels_per_item


def test_dropout_samples_which_items_not_the_first_ones():
    """dac #40: DAC always drops the first p * batch items."""
    draws = torch.stack([sample_levels_per_item(8, 6, p=0.5) for _ in range(2000)])
    assert draws.min() >= 1 and draws.max() <= 6
    dropped = (draws < 6).float().mean(dim=0)  # per batch position
    # P(drop) = 0.5 * P(draw < 6) = 0.5 * 5/6 at every position, first and last alike.
    assert torch.allclose(dropped, torch.full((8,), 0.5 * 5 / 6), atol=0.05), dropped
    assert (draws == 1).any(dim=0).all()


def test_no_dropout_when_p_is_zero_or_in_eval():
    assert torch.equal(sample_levels_per_item(5, 4, p=0.0), torch.full((5,), 4))
    rvq = ResidualVQ(dim=4, num_quantizers=4, codebook_size=8, quantizer_dropout=1.0).eval()
    assert (rvq(torch.randn(16, 4, 3)).levels_per_item == 4).all()


def test_dropped_items_output_only_their_first_levels():
    torch.manual_seed(3)
    rvq = ResidualVQ(dim=4, num_quantizers=5, codebook_size=8, quantizer_dropout=1.0, post_scale=True)
    rvq(torch.randn(8, 4, 6))  # initialise
    z = torch.randn(16, 4, 6)
    with frozen_codebooks(rvq):  # train mode with dropout, but no EMA step between forward and decode
        out = rvq(z)
    assert len(out.levels_per_item.unique()) > 1
    for b, n in enumerate(out.levels_per_item.tolist()):
        expected = rvq.decode(out.codes[b : b + 1, :n])
        assert torch.allclose(out.quantized[b : b + 1], expected, atol=1e-5)


def test_dropped_levels_do_not_update_their_codebooks():
    rvq = ResidualVQ(dim=4, num_quantizers=3, codebook_size=8, quantizer_dropout=1.0, init="random")
    torch.manual_seed(0)
    z = torch.randn(6, 4, 5)
    out = rvq(z)
    uses_last = int((out.levels_per_item == 3).sum())
    hist = rvq.levels[2].last_histogram
    assert int(hist.sum()) == uses_last * 5  # only rows of items that used level 2 are counted


def test_explicit_level_count_is_honoured_in_training_and_eval():
    """dac #106: DAC ignores n_quantizers in training."""
    rvq = ResidualVQ(dim=4, num_quantizers=6, codebook_size=8)
    z = torch.randn(3, 4, 5)
    train_out = rvq.train()(z, num_levels=2)
    assert train_out.codes.shape == (3, 2, 5)
    assert int(rvq.levels[2].trained_steps) == 0  # levels beyond the count were not touched
    eval_out = rvq.eval()(z, num_levels=2)
    assert eval_out.codes.shape == (3, 2, 5)
    assert torch.allclose(eval_out.quantized, rvq.decode(eval_out.codes), atol=1e-5)


def test_dropout_within_an_explicit_level_count():
    rvq = ResidualVQ(dim=4, num_quantizers=6, codebook_size=8, quantizer_dropout=1.0)
    levels = torch.cat([rvq(torch.randn(8, 4, 2), num_levels=3).levels_per_item for _ in range(30)])
    assert set(levels.tolist()) == {1, 2, 3}


def test_a_level_alone_learns_only_from_the_rows_that_use_it():
    """`Codebook.forward` with a row mask: what the stack does for one level under dropout."""
    from codec.quantize import Codebook

    level = Codebook(4, 8, init="random", dead_code_threshold=0.0, decay=0.5)
    rows = torch.randn(10, 4)
    used = torch.arange(10) < 4
    before = level.codebook.clone()
    out = level(rows, used)
    assert out.codes.shape == (10,) and int(level.last_histogram.sum()) == 4
    moved = (level.codebook - before).norm(dim=1) > 1e-3  # unused codes keep their value (up to Laplace eps)
    assert set(moved.nonzero().flatten().tolist()) == set(out.codes[:4].tolist())  # only the used rows' codes
    assert int(level.trained_steps) == 1
