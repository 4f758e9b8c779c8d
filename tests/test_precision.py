"""Mixed precision: under bf16 autocast the quantizer still searches and keeps its statistics in fp32.

bf16 has 8 bits of mantissa: distances rounded to it pick other codes for a good share of the rows,
and an EMA moving by 1% per step in bf16 stalls. So the stack turns autocast off inside and works
in float32 whatever its input; its output comes back in the input's dtype.
"""

import copy

import pytest
import torch
from torch import nn

from codec.cli import CodecCLI
from codec.quantize import ResidualVQ
from codec.runs import read_metrics

from helpers import CONF, TINY


@pytest.mark.parametrize("options", [{}, {"normalization": "l2", "codebook_dim": 8},
                                     {"update": "gradient", "quantizer_dropout": 0.5}])
def test_bf16_autocast_codes_and_statistics_are_those_of_float32(options):
    torch.manual_seed(0)
    encoder = nn.Conv1d(4, 32, kernel_size=1)
    rvq = ResidualVQ(dim=32, num_quantizers=4, codebook_size=256, dead_code_threshold=0.5, **options)
    reference = copy.deepcopy(rvq)
    audio = torch.randn(8, 4, 256)
    for step in range(3):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = encoder(audio)
            assert z.dtype == torch.bfloat16
            torch.manual_seed(step)
            out = rvq(z)
        torch.manual_seed(step)
        expected = reference(z.detach().float())  # the same bf16 values, no autocast
        assert out.quantized.dtype == torch.bfloat16
        assert torch.equal(out.codes, expected.codes)
        assert torch.allclose(out.commit_per_level, expected.commit_per_level, rtol=1e-5)
        (out.quantized.float().square().sum() + sum(out.losses.values())).backward()
    for (name, got), (_, want) in zip(rvq.state_dict().items(), reference.state_dict().items(), strict=True):
        assert got.dtype == want.dtype and (not got.is_floating_point() or got.dtype == torch.float32), name
        assert torch.allclose(got.float(), want.float(), atol=1e-5), name


def test_bf16_distances_would_pick_other_codes():
    """What the test above guards against: the same search in bf16 disagrees with float32."""
    torch.manual_seed(0)
    x, book = torch.randn(2000, 32) * 3, torch.randn(256, 32)
    exact = torch.cdist(x, book).argmin(dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = torch.addmm((book * book).sum(1), x, book.t(), alpha=-2.0).argmin(dim=1)
    assert int((rounded != exact).sum()) > 5  # about 1% of the rows here


def test_bf16_mixed_training_runs_end_to_end(tmp_path):
    CodecCLI(args=["fit", "-c", str(CONF / "phase_b.yaml"), *TINY, f"--run.root={tmp_path}",
                   "--trainer.max_steps=3", "--trainer.val_check_interval=3", "--trainer.precision=bf16-mixed"])
    (run_dir,) = (tmp_path / "phase_b").glob("version_*")
    rows = read_metrics(run_dir)
    losses = [float(r["train/loss/total"]) for r in rows if r.get("train/loss/total")]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    snr = [float(r["val/audio/snr_db"]) for r in rows if r.get("val/audio/snr_db")]
    assert snr and all(torch.isfinite(torch.tensor(snr)))
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    books = [v for k, v in state.items() if k.endswith(".codebook")]
    assert books and all(b.dtype == torch.float32 and torch.isfinite(b).all() for b in books)
