"""F1: the number of active levels travels with the model; decode refuses untrained levels."""

import io

import pytest
import torch

from codec.quantize import ResidualVQ, frozen_codebooks


def roundtrip(rvq: ResidualVQ, **kw) -> ResidualVQ:
    buffer = io.BytesIO()
    torch.save(rvq.state_dict(), buffer)
    buffer.seek(0)
    fresh = ResidualVQ(dim=8, num_quantizers=8, codebook_size=16, **kw)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def test_num_active_is_in_the_state_dict_and_restored_on_load():
    rvq = ResidualVQ(dim=8, num_quantizers=8, codebook_size=16)
    rvq.set_num_active(3)
    rvq(torch.randn(2, 8, 20))
    assert int(rvq.state_dict()["num_active"]) == 3
    loaded = roundtrip(rvq).eval()
    assert int(loaded.num_active) == 3
    z = torch.randn(2, 8, 11)
    out = loaded(z)
    assert out.codes.shape == (2, 3, 11)
    assert torch.equal(out.codes, rvq.eval()(z).codes)


def test_loaded_model_quantizes_exactly_like_the_saved_one():
    rvq = ResidualVQ(dim=8, num_quantizers=8, codebook_size=16, normalization="rms_scale", post_scale=True)
    for _ in range(3):
        rvq(torch.randn(4, 8, 10))
    loaded = roundtrip(rvq, normalization="rms_scale", post_scale=True).eval()
    z = torch.randn(2, 8, 13)
    assert torch.equal(loaded(z).quantized, rvq.eval()(z).quantized)


def test_decode_refuses_more_levels_than_are_active():
    rvq = ResidualVQ(dim=8, num_quantizers=8, codebook_size=16)
    rvq.set_num_active(3)
    with pytest.raises(ValueError, match="5 levels but this model has 3 active"):
        rvq.decode(torch.zeros(1, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="at most 3"):
        rvq(torch.randn(1, 8, 4), num_levels=5)


@pytest.mark.parametrize("normalization", ["none", "zscore", "l2", "rms_scale"])
def test_decode_of_the_codes_reproduces_the_quantized_output(normalization):
    rvq = ResidualVQ(dim=8, num_quantizers=4, codebook_size=16, codebook_dim=4,
                     normalization=normalization, post_scale=True)
    rvq(torch.randn(4, 8, 10))
    rvq.eval()
    z = torch.randn(3, 8, 7)
    out = rvq(z)
    codes, scale = rvq.encode(z)
    assert torch.equal(codes, out.codes)
    assert torch.allclose(rvq.decode(codes, scale), out.quantized, atol=1e-5)
    # fewer levels decode too (bitrate scalability)
    assert torch.allclose(rvq.decode(codes[:, :2], scale), rvq(z, num_levels=2).quantized, atol=1e-5)


def test_rms_scale_decode_needs_the_side_information():
    rvq = ResidualVQ(dim=8, num_quantizers=2, codebook_size=16, normalization="rms_scale").eval()
    codes, scale = rvq.encode(torch.randn(1, 8, 5))
    assert scale.shape == (1, 1, 1)
    assert rvq.side_info_bits_per_item == 32
    with pytest.raises(ValueError, match="scale"):
        rvq.decode(codes)


def test_set_num_active_validates_its_range():
    rvq = ResidualVQ(dim=8, num_quantizers=4, codebook_size=16)
    for bad in (0, 5):
        with pytest.raises(ValueError, match=r"\[1, 4\]"):
            rvq.set_num_active(bad)


# ------------------------------------------------------------------------- input scale (issue 9)


def test_input_scale_is_an_ema_of_each_steps_largest_input_value():
    rvq = ResidualVQ(dim=8, num_quantizers=2, codebook_size=16, decay=0.9)
    level0, level1 = rvq.levels
    assert float(level0.input_scale) == 0.0  # never measured
    z = torch.randn(4, 8, 50)
    rvq(z)  # k-means init sets it to the batch's largest |value|, then the first EMA step
    first = float(z.abs().max())
    assert float(level0.input_scale) == pytest.approx(first, rel=1e-5)
    assert 0 < float(level1.input_scale) < first  # level 1 sees the residual
    z2 = torch.randn(4, 8, 50) * 10
    rvq(z2)
    assert float(level0.input_scale) == pytest.approx(0.9 * first + 0.1 * float(z2.abs().max()), rel=1e-4)
    assert float(level0.last_input_absmax) == pytest.approx(float(z2.abs().max()), rel=1e-5)
    assert rvq.level_stats()[0].input_scale == pytest.approx(float(level0.input_scale))


def test_input_scale_moves_only_with_training_side_effects():
    rvq = ResidualVQ(dim=8, num_quantizers=2, codebook_size=16, quantizer_dropout=1.0)
    rvq(torch.randn(4, 8, 20))
    scale = rvq.levels[0].input_scale.clone()
    rvq.eval()(torch.randn(4, 8, 20) * 100)
    with frozen_codebooks(rvq.train()):
        rvq(torch.randn(4, 8, 20) * 100)
    with torch.inference_mode():
        rvq(torch.randn(4, 8, 20) * 100)
    assert torch.equal(rvq.levels[0].input_scale, scale)
    rvq(torch.randn(4, 8, 20) * 100)
    assert float(rvq.levels[0].input_scale) > float(scale)


def test_old_checkpoints_without_the_new_buffers_load_as_never_measured():
    rvq = ResidualVQ(dim=8, num_quantizers=2, codebook_size=16)
    rvq(torch.randn(2, 8, 20))
    state = rvq.state_dict()
    old = {k: v for k, v in state.items() if not k.endswith(("input_scale", "rejected_updates"))}
    fresh = ResidualVQ(dim=8, num_quantizers=2, codebook_size=16)
    fresh.levels[0].input_scale.fill_(5.0)
    fresh.load_state_dict(old)  # strict: no missing key
    assert float(fresh.levels[0].input_scale) == 0.0 and int(fresh.levels[0].rejected_updates) == 0
    assert torch.equal(fresh.levels[0].codebook, rvq.levels[0].codebook)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.levels[0].input_scale, rvq.levels[0].input_scale)


def test_python_mirrors_of_the_buffers_follow_every_way_they_change():
    """num_active and initialized are read in the hot path as Python values; whatever writes the
    buffers (set_num_active, load_state_dict, an in-place fill, a move) is seen."""
    rvq = ResidualVQ(dim=8, num_quantizers=4, codebook_size=16)
    assert rvq.active_levels == 4
    rvq.set_num_active(2)
    assert rvq.active_levels == 2 and rvq(torch.randn(1, 8, 5)).codes.shape[1] == 2
    rvq.num_active.fill_(3)
    assert rvq.active_levels == 3 and rvq(torch.randn(1, 8, 5)).codes.shape[1] == 3
    other = ResidualVQ(dim=8, num_quantizers=4, codebook_size=16)
    other.load_state_dict(rvq.state_dict())
    assert other.active_levels == 3 and other.levels[0].is_initialized
    other.levels[0].initialized.fill_(False)
    assert not other.levels[0].is_initialized
    other(torch.randn(2, 8, 20))  # initialises again from this batch
    assert other.levels[0].is_initialized and bool(other.levels[0].initialized)
    assert rvq.to(torch.float64).active_levels == 3
