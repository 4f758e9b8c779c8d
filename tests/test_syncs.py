"""A training step of the stack never waits for the device, and always launches the same operators.

On CPU the operator audit (codec.quantize.audit) is the proxy: it counts the operators that read a
value back to the host or size a result by the data (.item(), nonzero, boolean masks, bincount).
On a GPU, `torch.cuda.set_sync_debug_mode("error")` checks the real thing.
"""

import pytest
import torch

from codec.quantize import ResidualVQ, frozen_codebooks
from codec.quantize.audit import OperatorAudit

VARIANTS = {
    f"{update}/{normalization}": {"update": update, "normalization": normalization}
    for update in ("ema", "gradient") for normalization in ("none", "l2", "zscore", "rms_scale")
} | {
    "ema/dropout": {"quantizer_dropout": 0.5},
    "gradient/dropout": {"update": "gradient", "quantizer_dropout": 0.5},
    "ema/post_scale": {"post_scale": True},
    "ema/projections": {"codebook_dim": 8},
    "gradient/projections/l2": {"update": "gradient", "codebook_dim": 8, "normalization": "l2"},
    "ema/no_replacement": {"dead_code_threshold": 0.0},
    "ema/random_init": {"init": "random"},
}


def stack(device="cpu", **options) -> ResidualVQ:
    options = {"dead_code_threshold": 2.0, "check_finite": "deferred", **options}
    return ResidualVQ(dim=32, num_quantizers=8, codebook_size=64, **options).to(device).train()


def training_step(rvq: ResidualVQ, z: torch.Tensor) -> None:
    out = rvq(z if z.requires_grad else z.clone().requires_grad_())
    (out.quantized.square().sum() + sum(out.losses.values())).backward()


def initialize(rvq: ResidualVQ, device="cpu") -> None:
    """Training steps until every level had its k-means init (with dropout a level may meet its
    first rows only at a later step; that step may synchronise once)."""
    for _ in range(20):
        if all(level.is_initialized for level in rvq.levels):
            return
        training_step(rvq, torch.randn(4, 32, 50, device=device))
    raise AssertionError("levels still uninitialised after 20 steps")


def audited_step(rvq: ResidualVQ, z: torch.Tensor) -> OperatorAudit:
    with OperatorAudit() as audit:
        training_step(rvq, z)
    return audit


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_training_step_after_init_never_synchronizes(options):
    rvq = stack(**options)
    z = torch.randn(4, 32, 50, requires_grad=True)
    first = audited_step(rvq, z)  # k-means init reads row counts back: once, at the first step
    if options.get("init", "kmeans") == "kmeans":
        assert first.num_syncs > 0  # the audit sees synchronisation when there is some
    initialize(rvq)
    for _ in range(3):
        audit = audited_step(rvq, torch.randn(4, 32, 50, requires_grad=True))
        assert audit.num_syncs == 0, dict(audit.syncs)
    assert all(int(level.trained_steps) >= 3 for level in rvq.levels)  # the steps did train


def test_the_stack_before_this_change_would_fail_the_audit():
    """The audit is not blind: the synchronising operators the old step used are counted."""
    with OperatorAudit() as audit:
        x = torch.randn(10, 4)
        bool(torch.isfinite(x.sum()))  # bool() of a device value
        (x[:, 0] > 0).nonzero()  # dead codes found with nonzero()
        x[x[:, 0] > 0]  # boolean-mask indexing
        torch.bincount(torch.randint(0, 5, (10,)), minlength=5)  # reads its input's max back on a GPU
    assert set(audit.syncs) == {"_local_scalar_dense", "nonzero", "index", "bincount"}


def test_auto_finite_check_is_eager_on_cpu_and_deferred_on_accelerators():
    from codec.quantize.residual import _checks_eagerly

    assert _checks_eagerly("auto", torch.device("cpu"))
    assert not _checks_eagerly("auto", torch.device("cuda", 0))
    assert _checks_eagerly("eager", torch.device("cuda", 0)) and _checks_eagerly(True, torch.device("cuda"))
    assert not _checks_eagerly("deferred", torch.device("cpu")) and not _checks_eagerly(False, torch.device("cpu"))
    with pytest.raises(ValueError, match="check_finite.*'sometimes'"):
        ResidualVQ(dim=4, check_finite="sometimes")
    # The eager CPU check is the only synchronisation a default stack has on CPU.
    rvq = ResidualVQ(dim=32, num_quantizers=8, codebook_size=64)
    training_step(rvq, torch.randn(4, 32, 50))
    audit = audited_step(rvq, torch.randn(4, 32, 50))
    assert dict(audit.syncs) == {"_local_scalar_dense": 1}


@pytest.mark.parametrize("options", [{}, {"update": "gradient", "codebook_dim": 8, "quantizer_dropout": 0.5}])
def test_operators_per_step_are_a_fixed_set_whatever_the_dead_codes_and_the_logging(options):
    """Masked, fixed-shape updates: a step with most codes dead launches exactly what a step with none
    does, and reading the statistics on a logging step adds nothing to the next training step."""
    torch.manual_seed(0)
    rvq = stack(**options)
    z = torch.randn(4, 32, 50)
    initialize(rvq)
    counts, reseeded = [], []
    for step in range(4):
        if step == 2:
            for level in rvq.levels:  # nearly every code dead
                level.cluster_size.fill_(0.01)
        if step == 3:
            rvq.level_stats(), rvq.utilization()  # a logger read everything
        torch.manual_seed(1)  # the same dropout draws
        counts.append(audited_step(rvq, z.clone().requires_grad_()).operators)
        reseeded.append(int(rvq.levels[0].last_dead_count))
    assert reseeded[2] > 32 and reseeded[2] > reseeded[1]  # the step did move many codes
    assert all(c == counts[0] for c in counts), [sum(c.values()) for c in counts]


def test_eval_and_frozen_forwards_never_synchronize_either():
    rvq = stack()
    training_step(rvq, torch.randn(4, 32, 50))
    with OperatorAudit() as audit, torch.no_grad():
        rvq.eval()(torch.randn(4, 32, 50))
        with frozen_codebooks(rvq):
            rvq.train()(torch.randn(4, 32, 50))
    assert audit.num_syncs == 0, dict(audit.syncs)


def test_fewer_kernels_than_one_update_per_level():
    """The update of every level is one batched set of kernels: adding levels adds only each level's
    search and statistics (a handful of kernels), not another update."""
    def kernels(levels):
        rvq = ResidualVQ(dim=32, num_quantizers=levels, codebook_size=64, check_finite="deferred")
        training_step(rvq, torch.randn(4, 32, 50))
        return audited_step(rvq, torch.randn(4, 32, 50, requires_grad=True)).num_kernels

    per_level = (kernels(8) - kernels(2)) / 6
    assert per_level <= 12, per_level


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.set_sync_debug_mode checks a GPU")
@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_training_step_on_a_gpu_raises_no_synchronisation_error(options):
    rvq = stack("cuda", check_finite="auto", **options)
    initialize(rvq, "cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            training_step(rvq, torch.randn(4, 32, 50, device="cuda", requires_grad=True))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(torch.isfinite(level.codebook).all() for level in rvq.levels)
