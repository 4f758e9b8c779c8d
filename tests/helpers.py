"""Small data and state helpers shared by the tests."""

from pathlib import Path

import torch


def clustered(num_clusters: int, dim: int, per_cluster: int, spread: float = 0.05, scale: float = 5.0, seed: int = 0):
    """(points (N, dim), centres (num_clusters, dim), labels (N,)) of well-separated Gaussian clusters."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_clusters, dim, generator=g) * scale
    labels = torch.arange(num_clusters).repeat_interleave(per_cluster)
    points = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return points[perm], centres, labels[perm]


def as_frames(points: torch.Tensor, batch: int) -> torch.Tensor:
    """Rows (N, D) to a channels-first batch (batch, D, N // batch)."""
    n, d = points.shape
    return points[: n - n % batch].reshape(batch, -1, d).transpose(1, 2).contiguous()


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_state_equal(before: dict, module: torch.nn.Module) -> None:
    after = module.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed"


CONF = Path(__file__).resolve().parents[1] / "conf"


# A codec small enough to train a few steps in about a second: the CLI tests' common overrides.
TINY = [
    "--model.structure.channels=4", "--model.structure.strides=[2,4,5]", "--model.structure.latent_dim=16",
    "--model.quantizer.codebook_size=16", "--model.quantizer.num_quantizers=4",
    "--data.train_items=16", "--data.val_items=8", "--data.batch_size=4",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    "--run.wandb=false", "--trainer.log_every_n_steps=1",
]
