"""F1: the number of active levels travels with the model; decode refuses untrained levels."""

import io

import pytest
import torch

from codec.quantize import ResidualVQ


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
