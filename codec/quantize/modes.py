"""Run a whole model in train or eval mode with no lasting effect (F7 checks, `codec eval`).

A train-mode forward normally moves things: codebook EMA/init/replacement, BatchNorm running
statistics, the random stream (dropout, quantizer dropout). Comparing train mode with eval mode
must not change the model it measures, nor the course of the training it runs inside.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from codec.quantize.residual import frozen_codebooks


@contextmanager
def side_effect_free(module: nn.Module, train: bool) -> Iterator[None]:
    """`module` in train (or eval) mode under no_grad with frozen codebooks and a forked RNG; every
    buffer and every submodule's training flag is restored on exit."""
    flags = [(m, m.training) for m in module.modules()]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), frozen_codebooks(module):
            module.train(train)
            yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for m, training in flags:
            m.training = training
