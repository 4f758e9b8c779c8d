"""Eval mode, inference mode and frozen updates change no buffer and no parameter."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.quantize import ResidualVQ, frozen_codebooks

from helpers import assert_state_equal, snapshot

OPTIONS = st.fixed_dictionaries({
    "normalization": st.sampled_from(["none", "zscore", "l2", "rms_scale"]),
    "update": st.sampled_from(["ema", "gradient"]),
    "init": st.sampled_from(["kmeans", "random"]),
    "post_scale": st.booleans(),
    "codebook_dim": st.sampled_from([None, 3]),
    "quantizer_dropout": st.sampled_from([0.0, 0.5]),
})


def trained_rvq(options) -> ResidualVQ:
    rvq = ResidualVQ(dim=6, num_quantizers=3, codebook_size=8, **options)
    rvq(torch.randn(2, 6, 10))  # one training step: initialised, EMA moved
    return rvq


@settings(max_examples=25, deadline=None)
@given(options=OPTIONS, scale=st.sampled_from([1e-6, 1.0, 1e4]), frames=st.integers(1, 12))
def test_eval_mode_changes_nothing_whatever_the_input(options, scale, frames):
    rvq = trained_rvq(options).eval()
    before = snapshot(rvq)
    out = rvq(torch.randn(3, 6, frames) * scale)
    out.quantized.sum().backward() if out.quantized.requires_grad else None
    assert_state_equal(before, rvq)


@settings(max_examples=15, deadline=None)
@given(options=OPTIONS)
def test_inference_mode_in_train_mode_changes_nothing(options):
    rvq = trained_rvq(options).train()
    before = snapshot(rvq)
    with torch.inference_mode():
        rvq(torch.randn(2, 6, 9) * 5)
    assert_state_equal(before, rvq)


def test_frozen_codebooks_allow_train_mode_forward_without_updates():
    rvq = trained_rvq({}).train()
    before = snapshot(rvq)
    with frozen_codebooks(rvq):
        rvq(torch.randn(2, 6, 9) * 5)
    assert_state_equal(before, rvq)
    rvq(torch.randn(2, 6, 9) * 5)  # and outside the context, training updates resume
    assert not torch.equal(before["levels.0.codebook"], rvq.levels[0].codebook)


@pytest.mark.parametrize("mode", ["eval", "inference"])
def test_kmeans_never_runs_outside_training(mode):
    """EnCodec runs its k-means init on the first forward, even in eval mode."""
    rvq = ResidualVQ(dim=6, num_quantizers=2, codebook_size=8, init="kmeans")
    before = snapshot(rvq)
    if mode == "eval":
        rvq.eval()(torch.randn(2, 6, 9))
    else:
        with torch.inference_mode():
            rvq(torch.randn(2, 6, 9))
    assert not bool(rvq.levels[0].initialized)
    assert_state_equal(before, rvq)


def test_training_forward_does_update_buffers():
    """The counterpart: the checks above would see a change if there were one."""
    rvq = ResidualVQ(dim=6, num_quantizers=2, codebook_size=8)
    before = snapshot(rvq)
    rvq(torch.randn(2, 6, 9))
    assert bool(rvq.levels[0].initialized)
    with pytest.raises(AssertionError, match="changed"):
        assert_state_equal(before, rvq)
