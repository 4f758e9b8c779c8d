"""F6 and the straight-through traps: where every gradient goes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from codec.quantize import ResidualVQ
from codec.quantize import codebook as codebook_module
from codec.quantize.losses import codebook_loss
from codec.quantize.normalize import zscore


def encoder_and_rvq(update="gradient", **kw):
    encoder = nn.Conv1d(4, 16, kernel_size=1)
    rvq = ResidualVQ(dim=16, num_quantizers=kw.pop("num_quantizers", 1), codebook_size=8,
                     update=update, init="random", dead_code_threshold=0.0, **kw)
    return encoder, rvq


def grads_of(loss, params):
    gs = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params, strict=True)]


def commit_grads():
    """Gradient of the commitment loss on (encoder weight, codebook)."""
    encoder, rvq = encoder_and_rvq()
    out = rvq(encoder(torch.randn(2, 4, 10)))
    return grads_of(out.losses["commit"], [encoder.weight, rvq.levels[0].codebook])


def test_commitment_loss_reaches_the_encoder_and_not_the_codebook():
    enc_grad, book_grad = commit_grads()
    assert enc_grad.abs().sum() > 0
    assert book_grad.abs().sum() == 0


def test_broken_commitment_of_f6_fails_the_same_check(monkeypatch):
    """The reports' bug `mse(z.detach(), q)` planted in the codebook: the encoder gets nothing."""
    monkeypatch.setattr(codebook_module, "commitment_loss", lambda x, q, w=None: F.mse_loss(x.detach(), q))
    enc_grad, book_grad = commit_grads()
    assert enc_grad.abs().sum() == 0
    assert book_grad.abs().sum() > 0  # and it trains the codebook instead


def test_codebook_loss_trains_only_the_codebook_and_only_used_codes():
    encoder, rvq = encoder_and_rvq()
    out = rvq(encoder(torch.randn(2, 4, 10)))
    enc_grad, book_grad = grads_of(out.losses["codebook"], [encoder.weight, rvq.levels[0].codebook])
    assert enc_grad.abs().sum() == 0
    used = torch.zeros(8, dtype=torch.bool)
    used[out.codes.unique()] = True
    assert (book_grad[used].abs().sum(dim=1) > 0).all()
    assert (book_grad[~used] == 0).all()


def test_codebook_loss_moves_codewords_to_the_inputs():
    x = torch.randn(1, 5)
    q = nn.Parameter(torch.zeros(1, 5))
    opt = torch.optim.SGD([q], lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        codebook_loss(x, q).backward()
        opt.step()
    assert torch.allclose(q, x, atol=1e-3)


def test_ema_codebook_is_a_buffer_without_gradient_and_no_codebook_loss():
    _, rvq = encoder_and_rvq(update="ema")
    assert "levels.0.codebook" in dict(rvq.named_buffers())
    assert all("codebook" not in name for name, _ in rvq.named_parameters())
    out = rvq(torch.randn(2, 16, 5))
    assert set(out.losses) == {"commit"}


@pytest.mark.parametrize("normalization", ["none", "l2", "rms_scale"])
@pytest.mark.parametrize("depth", [1, 2, 8])
@pytest.mark.parametrize("codebook_dim", [None, 4])
def test_straight_through_of_the_whole_stack_is_the_identity(normalization, depth, codebook_dim):
    rvq = ResidualVQ(dim=16, num_quantizers=depth, codebook_size=8, codebook_dim=codebook_dim,
                     normalization=normalization, post_scale=True)
    z = torch.randn(3, 16, 7, requires_grad=True)
    upstream = torch.randn(3, 16, 7)
    (rvq(z).quantized * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)


def test_zscore_stack_passes_gradient_straight_through_to_the_standardised_input():
    rvq = ResidualVQ(dim=16, num_quantizers=4, codebook_size=8, normalization="zscore")
    z = torch.randn(2, 16, 5, requires_grad=True)
    upstream = torch.randn(2, 16, 5)
    (grad,) = torch.autograd.grad((rvq(z).quantized * upstream).sum(), z)
    (expected,) = torch.autograd.grad((zscore(z) * upstream).sum(), z)
    assert torch.allclose(grad, expected, atol=1e-6)


def test_every_level_commitment_reaches_the_encoder():
    """encodec #25: subtracting the straight-through output leaves later levels no gradient."""
    rvq = ResidualVQ(dim=16, num_quantizers=6, codebook_size=8)
    z = torch.randn(4, 16, 20, requires_grad=True)
    out = rvq(z)
    for level, commit in enumerate(out.commit_per_level):
        (g,) = torch.autograd.grad(commit, z, retain_graph=True)
        assert g.abs().sum() > 0, f"level {level} commitment does not reach z"


def test_factorised_projections_are_trained_in_and_out():
    rvq = ResidualVQ(dim=16, num_quantizers=2, codebook_size=8, codebook_dim=4, update="gradient")
    z = torch.randn(2, 16, 9, requires_grad=True)
    out = rvq(z)
    level = rvq.levels[0]
    # out_proj learns from whatever consumes the output (the decoder) ...
    w_out, w_in = grads_of(out.quantized.pow(2).sum(), [level.out_proj.weight, level.in_proj.weight])
    assert w_out.abs().sum() > 0 and w_in.abs().sum() == 0
    # ... and in_proj from the commitment loss.
    (w_in,) = grads_of(out.losses["commit"], [level.in_proj.weight])
    assert w_in.abs().sum() > 0


def test_post_scale_and_bias_learn_from_the_output():
    rvq = ResidualVQ(dim=16, num_quantizers=3, codebook_size=8, post_scale=True)
    out = rvq(torch.randn(2, 16, 9))
    gs, gb = grads_of(out.quantized.pow(2).sum(), [rvq.post_scale, rvq.post_bias])
    assert (gs.abs().sum(dim=1) > 0).all() and (gb.abs().sum(dim=1) > 0).all()


def test_fast_plain_stack_matches_the_general_loop():
    """EMA stacks without projections take a closed-form path (for speed); it must agree exactly."""
    import copy

    rvq = ResidualVQ(dim=16, num_quantizers=4, codebook_size=32, dead_code_threshold=2.0)
    rvq(torch.randn(4, 16, 20))
    fast, general = copy.deepcopy(rvq), copy.deepcopy(rvq)
    general._closed_form = lambda dropout: False
    assert fast._closed_form(dropout=False)
    weights = torch.randn(4)
    results = []
    for model in (fast, general):
        torch.manual_seed(1)  # same dead-code draws
        z = torch.randn(4, 16, 20, requires_grad=True)
        out = model(z)
        (out.commit_per_level * weights).sum().backward()
        results.append((out, z.grad, model.state_dict()))
    (a, ga, sa), (b, gb, sb) = results
    assert torch.equal(a.codes, b.codes)
    assert torch.allclose(a.quantized, b.quantized, atol=1e-6)
    assert torch.allclose(a.commit_per_level, b.commit_per_level, rtol=1e-5)
    assert ga.abs().max() > 1e-4 and torch.allclose(ga, gb, rtol=1e-4, atol=1e-9)
    for key in sa:
        assert torch.allclose(sa[key].float(), sb[key].float(), atol=1e-5), key


def test_the_residual_subtracts_the_detached_level_output():
    """residual.py's general loop: r_{i+1} = r_i - sg(out_i). Without the detach, the commitment
    losses of deeper levels would train earlier levels' out_proj (and post_scale paths) through
    the residual, pulling each level's output towards what the next level finds easy."""
    rvq = ResidualVQ(dim=16, num_quantizers=3, codebook_size=8, codebook_dim=4)
    z = torch.randn(4, 16, 20, requires_grad=True)
    out = rvq(z)
    deeper = out.commit_per_level[1:].sum()
    for level in rvq.levels:
        (g,) = grads_of(deeper, [level.out_proj.weight])
        assert g.abs().sum() == 0, "a deeper level's commitment reached an earlier out_proj"
    (gz,) = grads_of(deeper, [z])
    assert gz.abs().sum() > 0  # while the commitment of every level still reaches the encoder


def dac_stack(**kw):
    return ResidualVQ(dim=16, num_quantizers=kw.pop("num_quantizers", 3), codebook_size=8, codebook_dim=4,
                      normalization="l2", update="gradient", init="random", dead_code_threshold=0.0,
                      straight_through="level", **kw)


def test_dac_straight_through_is_the_projections_of_one_level():
    """straight_through="level" (DAC): a level emits out_proj(x + sg(q - x)), so d quantized / d z is
    W_out @ W_in for one level, where the stack-wide form gives the identity."""
    rvq = dac_stack(num_quantizers=1)
    z = torch.randn(2, 16, 5, requires_grad=True)
    upstream = torch.randn(2, 16, 5)
    (rvq(z).quantized * upstream).sum().backward()
    level = rvq.levels[0]
    jacobian = level.out_proj.weight @ level.in_proj.weight  # (16, 16)
    expected = torch.einsum("bdt,de->bet", upstream, jacobian)
    assert torch.allclose(z.grad, expected, atol=1e-5)
    assert not torch.allclose(z.grad, upstream, atol=1e-2)


def test_dac_straight_through_trains_every_in_proj_from_the_reconstruction():
    """With the stack-wide straight-through, in_proj learns from its commitment loss alone (the test
    above, test_factorised_projections_are_trained_in_and_out); DAC's form gives every level's in_proj
    the reconstruction gradient, and later levels reach earlier ones through the residual."""
    rvq = dac_stack()
    z = torch.randn(2, 16, 9, requires_grad=True)
    out = rvq(z)
    for level in rvq.levels:
        w_in, w_out = grads_of(out.quantized.pow(2).sum(), [level.in_proj.weight, level.out_proj.weight])
        assert w_in.abs().sum() > 0 and w_out.abs().sum() > 0
    # The last level's commitment reaches the first level's out_proj through the residual.
    (g,) = grads_of(out.commit_per_level[-1], [rvq.levels[0].out_proj.weight])
    assert g.abs().sum() > 0


def test_dac_straight_through_changes_gradients_not_values():
    """Same state, same input: both forms pick the same codes and emit the same values, and decoding
    the codes gives them back."""
    import copy

    level_form = dac_stack().eval()
    stack_form = copy.deepcopy(level_form)
    stack_form.straight_through = "stack"
    z = torch.randn(2, 16, 9)
    a, b = level_form(z), stack_form(z)
    assert torch.equal(a.codes, b.codes)
    assert torch.allclose(a.quantized, b.quantized, atol=1e-6)
    assert torch.allclose(level_form.decode(a.codes), a.quantized, atol=1e-6)


def test_dac_straight_through_never_takes_the_closed_form_path():
    rvq = ResidualVQ(dim=16, num_quantizers=2, codebook_size=8, straight_through="level")
    assert not rvq._closed_form(dropout=False)
    with pytest.raises(ValueError, match="straight_through must be one of"):
        ResidualVQ(dim=16, straight_through="per_level")
