"""F5: what each normalization does to the lookup, shown by the invariances it must have."""

import pytest
import torch

from codec.quantize import ResidualVQ
from codec.quantize.normalize import normalizer_for, rms_scale, zscore


def trained(normalization, levels=2, **kw):
    rvq = ResidualVQ(dim=8, num_quantizers=levels, codebook_size=16, normalization=normalization, **kw)
    for _ in range(3):
        rvq(torch.randn(4, 8, 16) * 2 + 1)
    return rvq.eval()


def test_zscore_standardises_every_frame_over_channels():
    z = torch.randn(3, 8, 5) * 7 + 3
    n = zscore(z)
    assert torch.allclose(n.mean(dim=1), torch.zeros(3, 5), atol=1e-5)
    assert torch.allclose(n.var(dim=1, unbiased=False), torch.ones(3, 5), atol=1e-3)


def test_zscore_stack_ignores_per_frame_gain_and_offset():
    rvq = trained("zscore")
    z = torch.randn(2, 8, 6)
    gain, offset = torch.rand(2, 1, 6) * 10 + 0.1, torch.randn(2, 1, 6) * 5
    a, b = rvq(z), rvq(z * gain + offset)
    assert torch.equal(a.codes, b.codes)
    assert torch.allclose(a.quantized, b.quantized, atol=1e-4)


def test_rms_scale_divides_by_the_item_scale_and_restores_it():
    rvq = trained("rms_scale")
    z = torch.randn(2, 8, 6)
    gain = torch.tensor([0.01, 50.0]).view(2, 1, 1)
    a, b = rvq(z), rvq(z * gain)
    assert torch.equal(a.codes, b.codes)  # codes do not depend on the item's loudness...
    assert torch.allclose(b.quantized, a.quantized * gain, rtol=1e-4, atol=1e-6)  # ...the output does
    assert torch.allclose(b.scale, rms_scale(z * gain))


def test_l2_lookup_is_by_cosine_so_per_frame_gain_does_not_change_the_first_code():
    rvq = trained("l2", levels=1)
    z = torch.randn(2, 8, 6)
    gain = torch.rand(2, 1, 6) * 10 + 0.1
    assert torch.equal(rvq(z).codes, rvq(z * gain).codes)


def test_l2_with_factorised_codes_looks_up_after_the_projection():
    rvq = trained("l2", levels=1, codebook_dim=3)
    level = rvq.levels[0]
    z = torch.randn(2, 8, 6)
    x = level.in_proj(z.transpose(1, 2).reshape(-1, 8))
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(level.codebook, dim=1).t()
    assert torch.equal(rvq(z).codes.flatten(), cos.argmax(dim=1))


def test_none_is_plain_euclidean_and_sensitive_to_gain():
    rvq = trained("none", levels=1)
    z = torch.randn(4, 8, 32)
    codes = rvq(z).codes.flatten()
    rows = z.transpose(1, 2).reshape(-1, 8)
    assert torch.equal(codes, torch.cdist(rows, rvq.levels[0].codebook).argmin(dim=1))
    assert not torch.equal(rvq(z * 0.01).codes, rvq(z).codes)


@pytest.mark.parametrize("name", ["batchnorm", "L2", ""])
def test_unknown_normalization_is_rejected_by_value(name):
    with pytest.raises(ValueError, match=repr(name)):
        ResidualVQ(dim=8, normalization=name)


@pytest.mark.parametrize("name, metric, bits, restores", [
    ("none", "euclidean", 0, False), ("zscore", "euclidean", 0, False),
    ("l2", "cosine", 0, False), ("rms_scale", "euclidean", 32, True),
])
def test_one_normalizer_object_owns_each_variant(name, metric, bits, restores):
    """`l2` is the config name users know; what it does is a cosine lookup in each level."""
    n = normalizer_for(name)
    assert (n.name, n.metric, n.side_info_bits_per_item) == (name, metric, bits)
    rvq = ResidualVQ(dim=8, normalization=name)
    assert rvq.normalizer is n and rvq.side_info_bits_per_item == bits
    assert all(level.metric == metric for level in rvq.levels)
    z = torch.randn(2, 8, 5) * 3 + 1
    normalized, side = n.transform(z)
    assert (side is not None) == restores
    assert torch.allclose(n.restore(normalized, side), z if name != "zscore" else zscore(z), atol=1e-5)
    assert n.anchor(z, normalized) is (normalized if name == "zscore" else z)
