"""Training steps per second of CodecModule under lightning.Trainer vs a plain PyTorch loop.

Same model, data, losses and optimizer in one run; the two are interleaved in
rounds so machine noise hits both alike. Target: framework overhead under 5%.
On CPU, and on the GPU as well when CUDA is available (`--device`): there the
plain loop moves each batch to the GPU itself, Lightning does it for its loop,
and both clocks stop after a `torch.cuda.synchronize()`.

    python bench/train_step.py [--steps 40] [--rounds 3] [--config conf/phase_b.yaml] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning as L
import torch
import yaml

from codec.data.synthetic import SyntheticSpeech
from codec.losses import LossConfig
from codec.model import QuantizerConfig, StructureConfig
from codec.module import CodecModule


def build(config: dict) -> CodecModule:
    model = config.get("model", {})
    return CodecModule(structure=StructureConfig(**model.get("structure", {})),
                       quantizer=QuantizerConfig(**model.get("quantizer", {})),
                       losses=LossConfig(**model.get("losses", {})))


def batches(steps: int, batch_size: int = 8) -> list[torch.Tensor]:
    data = SyntheticSpeech(steps * batch_size, seed=1)
    return [torch.stack([data[i * batch_size + j] for j in range(batch_size)]) for i in range(steps)]


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(module: CodecModule, data: list[torch.Tensor], device: str = "cpu") -> float:
    module.to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3, weight_decay=0.0)
    module.train()
    _synchronize(device)
    start = time.perf_counter()
    for batch in data:
        plain_step(module, optimizer, batch.to(device, non_blocking=True))
    _synchronize(device)
    return time.perf_counter() - start


def plain_step(module: CodecModule, optimizer: torch.optim.Optimizer, batch: torch.Tensor) -> None:
    """One training step of the codec without Lightning: reconstruction + VQ losses, AdamW."""
    out = module.codec(batch)
    recon, _ = module.reconstruction(out.audio, batch, model=module.codec)
    loss = recon + sum(out.vq.losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class Timed(L.Callback):
    def on_train_start(self, trainer, pl_module):
        _synchronize(pl_module.device.type)
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        _synchronize(pl_module.device.type)
        self.seconds = time.perf_counter() - self.start


def lightning_loop(module: CodecModule, data: list[torch.Tensor], tmp: str, device: str = "cpu") -> float:
    timer = Timed()
    trainer = L.Trainer(max_steps=len(data), logger=L.pytorch.loggers.CSVLogger(tmp), callbacks=[timer],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, log_every_n_steps=25,
                        accelerator="gpu" if device == "cuda" else "cpu", devices=1)
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default="conf/phase_b.yaml")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CPU, then the GPU too when CUDA is available")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    config = yaml.safe_load(open(args.config))
    data = batches(args.steps)
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"],
               "cuda": ["cuda"]}[args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.rounds} rounds, "
          f"{args.config}")
    for device in devices:
        compare(config, data, args.rounds, device)


def compare(config: dict, data: list[torch.Tensor], rounds: int, device: str) -> None:
    import tempfile

    plain, framework = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            torch.manual_seed(0)
            plain.append(plain_loop(build(config), data, device))
            torch.manual_seed(0)
            framework.append(lightning_loop(build(config), data, tmp, device))
    p, f = statistics.median(plain), statistics.median(framework)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{name}:")
    print(f"  plain PyTorch loop : {len(data) / p:6.2f} steps/s  (median of {rounds})")
    print(f"  lightning.Trainer  : {len(data) / f:6.2f} steps/s")
    print(f"  framework overhead : {100 * (f / p - 1):+.1f}%  (target < 5%)")


if __name__ == "__main__":
    main()
