"""Property tests over shapes, dtypes and options: the contract of ResidualVQ.forward/decode."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.quantize import ResidualVQ, frozen_codebooks

CONFIGS = st.fixed_dictionaries({
    "dim": st.sampled_from([1, 3, 8]),
    "num_quantizers": st.integers(1, 4),
    "codebook_size": st.sampled_from([2, 5, 16]),
    "codebook_dim": st.sampled_from([None, 2]),
    "normalization": st.sampled_from(["none", "zscore", "l2", "rms_scale"]),
    "update": st.sampled_from(["ema", "gradient"]),
    "init": st.sampled_from(["kmeans", "random"]),
    "dead_code_threshold": st.sampled_from([0.0, 2.0]),
    "quantizer_dropout": st.sampled_from([0.0, 0.5]),
    "post_scale": st.booleans(),
})
DTYPES = st.sampled_from([torch.float32, torch.bfloat16])


@settings(max_examples=60, deadline=None)
@given(cfg=CONFIGS, batch=st.integers(1, 3), frames=st.integers(1, 9), dtype=DTYPES,
       training=st.booleans(), seed=st.integers(0, 2**16))
def test_forward_contract(cfg, batch, frames, dtype, training, seed):
    torch.manual_seed(seed)
    rvq = ResidualVQ(**cfg).train(training)
    z = (torch.randn(batch, cfg["dim"], frames) * 3).to(dtype).requires_grad_()
    with frozen_codebooks(rvq):  # so decode below sees the same codebooks as forward
        out = rvq(z)
    n = cfg["num_quantizers"]
    assert out.quantized.shape == z.shape and out.quantized.dtype == dtype
    assert out.codes.shape == (batch, n, frames) and out.codes.dtype == torch.int64
    assert 0 <= int(out.codes.min()) and int(out.codes.max()) < cfg["codebook_size"]
    assert torch.isfinite(out.quantized.float()).all()
    assert set(out.losses) == ({"commit", "codebook"} if cfg["update"] == "gradient" else {"commit"})
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.losses.values())
    assert ((out.levels_per_item >= 1) & (out.levels_per_item <= n)).all()

    upstream = torch.randn_like(z)
    (out.quantized * upstream).sum().backward()
    if cfg["normalization"] != "zscore":
        assert torch.equal(z.grad, upstream)

    if not training or cfg["quantizer_dropout"] == 0:
        decoded = rvq.decode(out.codes, out.scale).to(dtype)
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        assert torch.allclose(decoded.float(), out.quantized.float(), atol=tol, rtol=tol)


@settings(max_examples=20, deadline=None)
@given(cfg=CONFIGS, steps=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_training_keeps_every_buffer_finite(cfg, steps, seed):
    torch.manual_seed(seed)
    rvq = ResidualVQ(**cfg)
    for _ in range(steps):
        out = rvq((torch.randn(2, cfg["dim"], 5) * 10).requires_grad_())
        sum(out.losses.values()).backward()
    for name, tensor in rvq.state_dict().items():
        if tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name
