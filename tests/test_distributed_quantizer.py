"""The quantizer under torch.distributed: two real processes (gloo, CPU), as DDP runs it.

Every rank sees its own data and its own random stream. After a few dozen training steps (k-means
init, EMA, dead-code re-seeding, quantizer dropout, the progressive schedule), every rank holds the
same quantizer state, bit for bit; one step on two ranks equals one step of a single process on
the concatenated batch; a rank whose rows skip a level, or whose input is not finite, leaves no
rank waiting in a collective. All the scenarios run in one pair of processes (`ranks` fixture).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ranks import run_ranks
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import codec.quantize.residual as residual_module
from codec.quantize import ResidualVQ
from codec.quantize.audit import OperatorAudit
from codec.quantize.distributed import ddp_buffer_settings

DIM, LEVELS, CODES, FRAMES, ITEMS, STEPS = 16, 8, 32, 40, 4, 36

# Training scenarios: (ResidualVQ options, DDP's find_unused_parameters). The progressive schedule
# leaves the parameters of inactive levels (projections, gradient codebooks) unused: DDP needs
# find_unused_parameters=True for them (Lightning: strategy="ddp_find_unused_parameters_true").
TRAINED = {
    "ema_closed_form": ({"dead_code_threshold": 1.0}, False),
    "ema_dropout": ({"dead_code_threshold": 1.0, "quantizer_dropout": 0.5, "post_scale": True}, False),
    "gradient_projections_l2": ({"update": "gradient", "codebook_dim": 4, "normalization": "l2",
                                 "dead_code_threshold": 1.0, "quantizer_dropout": 0.5}, True),
}
# One-step scenarios compared with one process on the concatenated batch (no re-seeding: its
# candidate rows are random). Quantizer dropout is forced, not drawn: rank 1's items skip levels
# that rank 0's use, so levels meet their first rows on one rank only.
FORCED_LEVELS = {0: [8, 8, 3, 8], 1: [1, 1, 2, 1]}
COMPARED = {
    "ema": {},
    "ema_projections_post_scale": {"codebook_dim": 8, "post_scale": True},
    "ema_uneven_dropout": {"quantizer_dropout": 0.5},
    "gradient_projections_l2": {"update": "gradient", "codebook_dim": 4, "normalization": "l2"},
}
QUANTIZER_STATE = ("codebook", "embed_sum", "cluster_size", "input_scale", "initialized", "trained_steps",
                   "rejected_updates", "initial_codebook")


def batch(rank: int, step: int) -> torch.Tensor:
    """Each rank its own data, on its own scale (a reduction that forgot a rank would show)."""
    generator = torch.Generator().manual_seed(1000 * rank + step)
    return (1 + rank) * torch.randn(ITEMS, 4, FRAMES, generator=generator) + rank


def progressive(step: int) -> int:
    return 2 if step < 10 else 4 if step < 20 else LEVELS


class Toy(nn.Module):
    """Encoder, quantizer, decoder: the quantizer's inputs move as the encoder trains."""

    def __init__(self, **options):
        super().__init__()
        self.encoder = nn.Conv1d(4, DIM, 1)
        self.rvq = ResidualVQ(DIM, LEVELS, CODES, **options)
        self.decoder = nn.Conv1d(DIM, 4, 1)

    def forward(self, audio):
        out = self.rvq(self.encoder(audio))
        loss = F.mse_loss(self.decoder(out.quantized), audio) + sum(out.losses.values())
        return loss, out.levels_per_item


def _save(out: Path, name: str, rank: int, **record) -> None:
    torch.save(record, out / f"{name}-{rank}.pt")


# ------------------------------------------------------------------- run in each rank
def train(rank: int, out: Path, name: str, options: dict, find_unused: bool) -> None:
    torch.manual_seed(0)
    model = Toy(**options).train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ddp = DistributedDataParallel(model, find_unused_parameters=find_unused, **ddp_buffer_settings())
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-2)
    torch.manual_seed(100 + rank)  # its own random stream: k-means samples, candidate rows, dropout
    record = {"initialized_before": [], "levels_per_item": [], "reseeded": []}
    for step in range(STEPS):
        model.rvq.set_num_active(progressive(step))
        record["initialized_before"].append([level.is_initialized for level in model.rvq.levels])
        loss, levels_per_item = ddp(batch(rank, step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        record["levels_per_item"].append(levels_per_item)
        record["reseeded"].append([int(level.last_dead_count) if level.last_dead_count is not None else 0
                                   for level in model.rvq.levels])
    local = [level.last_histogram for level in model.rvq.levels]
    summed = [s.histogram for s in model.rvq.level_stats(across_ranks=True)]
    _save(out, name, rank, state=model.state_dict(), local=local, summed=summed,
          warnings=[str(w.message) for w in caught], **record)


def forced_levels(batch_size, num_levels, p, device, generator=None):
    return torch.tensor(FORCED_LEVELS[torch.distributed.get_rank()])


def one_step(rank: int, out: Path, name: str, options: dict) -> None:
    """Two steps (k-means init and EMA, then EMA) of a bare stack on this rank's half of the batch."""
    torch.manual_seed(0)
    rvq = ResidualVQ(DIM, LEVELS, CODES, dead_code_threshold=0.0, **options).train()
    torch.manual_seed(100 + rank)  # rank 0's stream is the single process's
    sample = residual_module.sample_levels_per_item
    residual_module.sample_levels_per_item = forced_levels
    try:
        states = []
        for step in range(2):
            rvq(_latent(rank, step))
            states.append({k: v.clone() for k, v in rvq.state_dict().items()})
    finally:
        residual_module.sample_levels_per_item = sample
    _save(out, name, rank, states=states)


def _latent(rank: int, step: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 * rank + step)
    return (1 + rank) * torch.randn(ITEMS, DIM, FRAMES, generator=generator) + rank


def non_finite(rank: int, out: Path) -> None:
    """Rank 1's input turns NaN at step 1 (eager check): both ranks raise, and go on in step."""
    torch.manual_seed(0)
    rvq = ResidualVQ(DIM, LEVELS, CODES, check_finite="eager").train()
    errors = []
    for step in range(3):
        z = _latent(rank, step)
        if step == 1 and rank == 1:
            z[0, 0, :3] = float("nan")
        try:
            rvq(z)
        except ValueError as error:
            errors.append(str(error))
    _save(out, "non_finite", rank, errors=errors, state=rvq.state_dict())


def buffer_broadcast(rank: int, out: Path) -> None:
    """With and without DDP's buffer broadcast: the host syncs of a step after init, and the state.
    Built with a different seed on each rank, with random (not k-means) codebooks: buffers that
    DDP does not broadcast at construction when broadcast_buffers=False."""
    syncs, states = {}, {}
    for broadcast in (True, False):
        torch.manual_seed(rank)
        model = Toy(check_finite="deferred", init="random", dead_code_threshold=1.0).train()
        ddp = DistributedDataParallel(model, broadcast_buffers=broadcast)
        for step in range(3):
            ddp(batch(rank, step))[0].backward()
        with OperatorAudit() as audit:
            ddp(batch(rank, 3))[0].backward()
        syncs[broadcast], states[broadcast] = dict(audit.syncs), model.state_dict()
    _save(out, "buffer_broadcast", rank, syncs=syncs, states=states)


def every_scenario(rank: int, world_size: int, out: str) -> None:
    out = Path(out)
    # torch 2.14 renames it forward_sync_buffers (which still syncs at construction); the old name
    # is the one every supported torch knows, and the harder test (no sync at construction either).
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
    for name, (options, find_unused) in TRAINED.items():
        train(rank, out, name, options, find_unused)
    for name, options in COMPARED.items():
        one_step(rank, out, "one_step_" + name, options)
    non_finite(rank, out)
    buffer_broadcast(rank, out)


# ------------------------------------------------------------------------ the tests
@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    run_ranks(every_scenario, str(out))
    return lambda name: [torch.load(out / f"{name}-{rank}.pt", weights_only=False) for rank in (0, 1)]


def assert_identical(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), f"{key} differs between the ranks"


@pytest.mark.parametrize("name", TRAINED)
def test_after_training_every_rank_holds_the_same_state(ranks, name):
    zero, one = ranks(name)
    assert_identical(zero["state"], one["state"])  # codebooks, EMA buffers, input_scale, num_active, ...
    rvq = {k.removeprefix("rvq."): v for k, v in zero["state"].items() if k.startswith("rvq.")}
    assert int(rvq["num_active"]) == LEVELS
    for i in range(LEVELS):
        assert bool(rvq[f"levels.{i}.initialized"]) and int(rvq[f"levels.{i}.trained_steps"]) > 0
        assert float(rvq[f"levels.{i}.input_scale"]) > 0
    # The state is not trivially equal: the ranks saw different data, and dead codes were re-seeded.
    assert zero["reseeded"] == one["reseeded"] and sum(map(sum, zero["reseeded"])) > 0
    assert not torch.equal(zero["local"][0], one["local"][0])
    assert zero["warnings"] == [], zero["warnings"]  # the settings the installed torch knows, undeprecated


def test_levels_meet_their_first_rows_on_one_rank_only_and_still_start_alike(ranks):
    """The rare branch: with dropout, a level may get its first rows on one rank and none on the
    other; its k-means init still runs on both (with every rank's rows), at the same step."""
    for name in ("one_step_ema_uneven_dropout",):
        zero, one = ranks(name)
        assert max(FORCED_LEVELS[1]) < LEVELS  # rank 1's rows skip the top levels at step 0
        for i in range(LEVELS):
            assert bool(zero["states"][0][f"levels.{i}.initialized"])
        for state_zero, state_one in zip(zero["states"], one["states"], strict=True):
            assert_identical(state_zero, state_one)


@pytest.mark.parametrize("name", COMPARED)
def test_two_ranks_equal_one_process_on_the_concatenated_batch(ranks, name):
    zero, one = ranks("one_step_" + name)
    torch.manual_seed(0)
    rvq = ResidualVQ(DIM, LEVELS, CODES, dead_code_threshold=0.0, **COMPARED[name]).train()
    torch.manual_seed(100)  # rank 0's stream: the k-means samples
    levels = torch.tensor(FORCED_LEVELS[0] + FORCED_LEVELS[1])
    sample = residual_module.sample_levels_per_item
    residual_module.sample_levels_per_item = lambda *args, **kwargs: levels
    try:
        for step in range(2):
            rvq(torch.cat([_latent(0, step), _latent(1, step)]))
            assert_identical(zero["states"][step], one["states"][step])
            single = rvq.state_dict()
            for key, value in zero["states"][step].items():
                if key.rsplit(".", 1)[-1] in QUANTIZER_STATE:
                    torch.testing.assert_close(value, single[key], rtol=1e-4, atol=1e-5, msg=f"step {step}: {key}")
    finally:
        residual_module.sample_levels_per_item = sample
    assert all(int(single[f"levels.{i}.trained_steps"]) == 2 for i in range(LEVELS))


def test_summed_histograms_are_every_ranks_codes(ranks):
    zero, one = ranks("ema_dropout")
    for a, b, summed_zero, summed_one in zip(zero["local"], one["local"], zero["summed"], one["summed"], strict=True):
        assert torch.equal(summed_zero, a + b) and torch.equal(summed_one, a + b)


def test_a_non_finite_input_on_one_rank_stops_the_step_on_every_rank(ranks):
    zero, one = ranks("non_finite")
    assert len(one["errors"]) == 1 and "3 NaN" in one["errors"][0]
    assert len(zero["errors"]) == 1 and "another process" in zero["errors"][0]
    assert_identical(zero["state"], one["state"])
    assert all(int(zero["state"][f"levels.{i}.trained_steps"]) == 2 for i in range(LEVELS))


def test_without_ddp_buffer_broadcast_ranks_built_differently_still_agree_and_never_sync(ranks):
    """`broadcast_buffers=False` is safe and costs nothing: the quantizer copies rank 0's buffers at a
    level's first training step and keeps them equal itself, and a step reads nothing back."""
    zero, one = ranks("buffer_broadcast")
    for broadcast in (True, False):
        assert_identical(zero["states"][broadcast], one["states"][broadcast])
    assert zero["syncs"][False] == {} and one["syncs"][False] == {}
