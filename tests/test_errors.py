"""Bad input gets a clear error that names what is wrong, and leaves the model untouched."""

import pytest
import torch

from codec.quantize import ResidualVQ

from helpers import assert_state_equal, snapshot


@pytest.fixture
def rvq():
    return ResidualVQ(dim=8, num_quantizers=2, codebook_size=16)


@pytest.mark.parametrize("shape", [(8, 10), (1, 1, 8, 10)])
def test_wrong_rank_names_the_expected_layout(rvq, shape):
    with pytest.raises(ValueError, match=r"\(batch, 8, frames\)"):
        rvq(torch.randn(*shape))


def test_wrong_channel_count_names_both_counts(rvq):
    with pytest.raises(ValueError, match="dim=8.*10 channels"):
        rvq(torch.randn(2, 10, 8))


def test_integer_input_is_rejected(rvq):
    with pytest.raises(ValueError, match="floating-point"):
        rvq(torch.zeros(2, 8, 3, dtype=torch.long))


@pytest.mark.parametrize("bad, word", [(float("nan"), "2 NaN and 0 inf"), (float("inf"), "0 NaN and 2 inf")])
def test_non_finite_input_is_named_and_nothing_is_updated(rvq, bad, word):
    before = snapshot(rvq)
    z = torch.randn(2, 8, 5)
    z[0, 3, 1] = z[1, 0, 4] = bad
    with pytest.raises(ValueError, match=word):
        rvq(z)
    assert_state_equal(before, rvq)  # no NaN codebook, no half-done k-means


@pytest.mark.parametrize("kwargs, word", [
    ({"update": "adam"}, "update.*'adam'"),
    ({"init": "zeros"}, "init.*'zeros'"),
    ({"normalization": "batch"}, "normalization.*'batch'"),
    ({"decay": 1.0}, "decay"),
    ({"quantizer_dropout": 1.5}, "quantizer_dropout"),
    ({"codebook_size": 1}, "codebook_size"),
    ({"num_quantizers": 0}, "num_quantizers"),
    ({"codebook_dim": 0}, "codebook_dim"),
    ({"dead_code_threshold": -1.0}, "dead_code_threshold"),
    ({"commitment_weight": -0.1}, "commitment_weight"),
])
def test_unknown_or_out_of_range_options_are_rejected_by_name(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ResidualVQ(dim=8, **kwargs)


@pytest.mark.parametrize("codes, word", [
    (torch.zeros(1, 2, 3), "integers"),
    (torch.full((1, 2, 3), 16), r"\[0, 16\)"),
    (torch.full((1, 2, 3), -1), r"\[0, 16\)"),
    (torch.zeros(2, 3, dtype=torch.long), "batch, levels, frames"),
])
def test_bad_codes_are_rejected(rvq, codes, word):
    with pytest.raises(ValueError, match=word):
        rvq.decode(codes)
