"""The codec's wiring and its structure switches (F4), without training."""

from dataclasses import fields

import pytest
import torch

from codec.model import Codec, QuantizerConfig, StructureConfig
from codec.quantize import ResidualVQ


def small(**structure):
    return Codec(StructureConfig(channels=4, strides=[2, 4], latent_dim=8, **structure),
                 QuantizerConfig(num_quantizers=2, codebook_size=16))


@pytest.mark.parametrize("length", [800, 801, 37])
def test_output_has_the_input_length_and_frames_follow_the_hop(length):
    codec = small()
    out = codec(torch.randn(2, 1, length) * 0.1)
    assert out.audio.shape == (2, 1, length)
    assert out.vq.codes.shape == (2, 2, -(-length // 8))


def test_strided_layers_map_lengths_exactly():
    codec = Codec()  # strides 2*4*5*8
    assert codec.hop_length == 320
    assert codec(torch.randn(1, 1, 8000)).vq.codes.shape[-1] == 25


def test_weights_are_scaled_normal_with_zero_bias():
    """PyTorch's default conv init made the prototype's decoder ignore its input."""
    codec = Codec()
    conv = codec.encoder.net[0]
    assert torch.all(conv.bias == 0)
    assert conv.weight.std().item() == pytest.approx(1 / (1 * 7) ** 0.5, rel=0.25)
    # a decoder that sees different latents produces different audio
    z1, z2 = torch.randn(1, 64, 5), torch.randn(1, 64, 5)
    assert (codec._synthesize(z1, None, 1600) - codec._synthesize(z2, None, 1600)).abs().mean() > 1e-3


def test_structure_switches_add_and_remove_layers():
    plain = small(pre_rvq_conv=False, final_conv="none")
    assert isinstance(plain.pre_rvq_conv, torch.nn.Identity) and plain.final_conv is None
    ident = small(final_conv="identity")
    assert torch.equal(ident.final_conv.weight.squeeze(-1), torch.eye(8))
    default = small(final_conv="default")
    assert not torch.equal(default.final_conv.weight.squeeze(-1), torch.eye(8))
    with pytest.raises(ValueError, match="final_conv.*'eye'"):
        StructureConfig(final_conv="eye")


def test_waveform_norm_makes_the_codes_loudness_invariant_and_restores_the_scale():
    codec = small(waveform_norm=True).eval()
    audio = torch.randn(1, 1, 800) * 0.1
    quiet, loud = codec(audio * 0.01), codec(audio)
    assert torch.equal(quiet.vq.codes, loud.vq.codes)
    assert torch.allclose(quiet.audio * 100, loud.audio, rtol=1e-3, atol=1e-6)


def test_encode_decode_roundtrip_uses_the_active_levels():
    codec = small(waveform_norm=True)
    codec(torch.randn(4, 1, 800))  # initialise codebooks
    codec.eval()
    codec.quantizer.set_num_active(1)
    audio = torch.randn(1, 1, 790) * 0.2
    payload = codec.encode(audio)
    assert payload["codes"].shape[1] == 1
    decoded = codec.decode(**payload)
    assert torch.allclose(decoded, codec(audio).audio, atol=1e-5)


def test_quantizer_config_mirrors_residual_vq():
    """QuantizerConfig is what YAML can set; it must not drift from ResidualVQ's arguments."""
    import inspect

    rvq_args = set(inspect.signature(ResidualVQ.__init__).parameters) - {"self", "dim", "chunk_rows", "check_finite"}
    assert {f.name for f in fields(QuantizerConfig)} == rvq_args


def test_mono_batch_is_required():
    with pytest.raises(ValueError, match=r"\(batch, 1, samples\)"):
        small()(torch.randn(2, 800))
