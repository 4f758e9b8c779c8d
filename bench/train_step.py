"""Training steps per second of CodecModule under lightning.Trainer vs a plain PyTorch loop.

Same model, data, losses and optimizer in one run; the two are interleaved in
rounds so machine noise hits both alike. Target: framework overhead under 5%.

    python bench/train_step.py [--steps 40] [--rounds 3] [--config conf/phase_b.yaml]
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


def plain_loop(module: CodecModule, data: list[torch.Tensor]) -> float:
    optimizer = torch.optim.AdamW(module.parameters(), lr=2e-3, weight_decay=0.0)
    module.train()
    start = time.perf_counter()
    for batch in data:
        out = module.codec(batch)
        recon, _ = module.reconstruction(out.audio, batch, model=module.codec)
        loss = recon + sum(out.vq.losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


class Timed(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.start


def lightning_loop(module: CodecModule, data: list[torch.Tensor], tmp: str) -> float:
    timer = Timed()
    trainer = L.Trainer(max_steps=len(data), logger=L.pytorch.loggers.CSVLogger(tmp), callbacks=[timer],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, log_every_n_steps=25, accelerator="cpu")
    loader = torch.utils.data.DataLoader(data, batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default="conf/phase_b.yaml")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    config = yaml.safe_load(open(args.config))
    data = batches(args.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.rounds} rounds, "
          f"{args.config}")
    plain, framework = [], []
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            torch.manual_seed(0)
            plain.append(plain_loop(build(config), data))
            torch.manual_seed(0)
            framework.append(lightning_loop(build(config), data, tmp))
    p, f = statistics.median(plain), statistics.median(framework)
    print(f"plain PyTorch loop : {args.steps / p:6.2f} steps/s  (median of {args.rounds})")
    print(f"lightning.Trainer  : {args.steps / f:6.2f} steps/s")
    print(f"framework overhead : {100 * (f / p - 1):+.1f}%  (target < 5%)")


if __name__ == "__main__":
    main()
