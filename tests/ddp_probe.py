"""A callback for the DDP tests: each rank writes its quantizer state where the test can compare them.

Loaded by class path in a `codec fit` subprocess (`--trainer.callbacks+=ddp_probe.DumpQuantizerState`),
so it imports nothing from the tests but Lightning and codec.
"""

import os
from pathlib import Path

import lightning as L
import torch

from codec.callbacks.discovery import find_quantizers


class DumpQuantizerState(L.Callback):
    """At the end of the fit, `$DDP_DUMP_DIR/rank<R>.pt`: every quantizer buffer and parameter of this rank."""

    def on_fit_end(self, trainer, pl_module):
        state = {f"{name}.{key}": value.detach().cpu().clone() for name, rvq in find_quantizers(pl_module)
                 for key, value in rvq.state_dict().items()}
        state["global_step"] = torch.tensor(trainer.global_step)
        Path(os.environ["DDP_DUMP_DIR"]).mkdir(parents=True, exist_ok=True)
        torch.save(state, Path(os.environ["DDP_DUMP_DIR"]) / f"rank{trainer.global_rank}.pt")
