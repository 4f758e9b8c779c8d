"""One level of the residual stack: a codebook, its state, its k-means init and its losses.

Works on rows: inputs are (N, dim) with N = batch * frames. The optional
projection (DAC's factorised codes) maps `dim` to a small `codebook_dim`
where the lookup, the losses and the EMA live.

Gradients, stated once (tests check each):
- commitment loss mse(x, sg(q)) reaches the encoder (and in_proj), never the codebook;
- codebook loss mse(sg(x), q) trains the codebook when update="gradient";
- with update="ema" the codebook is a buffer and moves by EMA of the assigned inputs;
- the level's output out_proj(sg(q)) trains out_proj (and nothing upstream); with DAC's
  per-level straight-through (ResidualVQ(straight_through="level")) it is
  out_proj(sg(q) + x - sg(x)) and its gradient goes on to in_proj and the encoder.

Training-only side effects (k-means init, EMA, dead-code replacement, usage
counts, input scale) run only when `self.training`, updates are not frozen, and
we are not under torch.inference_mode(). Eval mode touches no buffer. The search
and the update are driven by `codec.quantize.step.LevelsStep`, which does them
for every level of a stack at once; `Codebook.forward` runs it for this level alone.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from codec.quantize.distributed import broadcast_from_first, gather_rows
from codec.quantize.kmeans import kmeans
from codec.quantize.lookup import check_metric, full_precision
from codec.quantize.losses import codebook_loss, commitment_loss
from codec.quantize.stats import LevelStats, distance_from_init, perplexity
from codec.quantize.step import LevelsStep
from codec.quantize.updates import UpdateRule

UPDATES = ("ema", "gradient")
INITS = ("kmeans", "random")

# Usage below this counts as dead in statistics when replacement is off (the reports' "<0.001 usage").
DEAD_USAGE_FLOOR = 1e-3

# Buffers added after checkpoints were first written, and the value an old checkpoint loads with.
NEVER_MEASURED = 0.0
_ADDED_BUFFERS = {"input_scale": NEVER_MEASURED, "rejected_updates": 0}


class LevelOutput(NamedTuple):
    output: torch.Tensor  # (N, dim) contribution of this level, out_proj(sg(q))
    codes: torch.Tensor  # (N,) int64
    commit: torch.Tensor  # scalar, unweighted
    codebook: torch.Tensor | None  # scalar, only when update="gradient"


class Codebook(nn.Module):
    def __init__(
        self,
        dim: int,
        codebook_size: int,
        codebook_dim: int | None = None,
        metric: str = "euclidean",
        update: str = "ema",
        decay: float = 0.99,
        init: str = "kmeans",
        kmeans_iters: int = 10,
        dead_code_threshold: float = 2.0,
        eps: float = 1e-5,
        chunk_rows: int | None = None,
        compile: bool = False,
    ):
        super().__init__()
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim or dim
        self.metric = check_metric(metric)
        self.update = update
        self.decay = decay
        self.init = init
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.eps = eps
        self.chunk_rows = chunk_rows
        self.compile_update = compile  # torch.compile the batched update (codec.quantize.step)
        self.updates_frozen = False  # set by `frozen_codebooks()`: train-mode forward without side effects

        projected = codebook_dim is not None and codebook_dim != dim
        self.in_proj = nn.Linear(dim, self.codebook_dim) if projected else nn.Identity()
        self.out_proj = nn.Linear(self.codebook_dim, dim) if projected else nn.Identity()

        start = torch.randn(codebook_size, self.codebook_dim)
        if update == "gradient":
            self.codebook = nn.Parameter(start)
        else:
            self.register_buffer("codebook", start)
            # A random code starts with a nominal mass of 1 so that, unused, it keeps its value
            # (EnCodec starts embed_avg at the codes with zero counts, so unused codes blow up).
            self.register_buffer("embed_sum", start.clone())
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("initial_codebook", start.clone())
        self.register_buffer("initialized", torch.tensor(init == "random"))
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))
        # EMA (this level's decay) of the largest |value| of its (projected) training inputs, per
        # step; NEVER_MEASURED (0) until the first training step. The F2 drift rule compares the
        # codebook against it.
        self.register_buffer("input_scale", torch.tensor(NEVER_MEASURED))
        # Code updates refused because they were not finite (inputs near the float32 limit).
        self.register_buffer("rejected_updates", torch.zeros((), dtype=torch.long))

        self.last_histogram: torch.Tensor | None = None  # (K,) int64: codes chosen in the last forward
        self.last_dead_count: torch.Tensor | None = None  # 0-d: codes re-seeded in the last training forward
        self.last_input_absmax: torch.Tensor | None = None  # 0-d: largest |value| of the last training inputs (sampled)
        self._initialized_seen: tuple[int, int] | None = None  # (version, address) of the flag last read
        self._initialized_value = False

    @property
    def rule(self) -> UpdateRule:
        return UpdateRule(self.update == "ema", self.decay, self.eps, self.dead_code_threshold)

    @property
    def projected(self) -> bool:
        return not isinstance(self.in_proj, nn.Identity)

    # ------------------------------------------------------------------ state
    @property
    def is_initialized(self) -> bool:
        """`initialized` as a Python bool, read back from the device only when the buffer changed
        (loaded, restored, moved), not at every step."""
        flag = self.initialized
        seen = (flag._version, flag.data_ptr())
        if seen != self._initialized_seen:
            self._initialized_value = bool(flag)
            self._initialized_seen = seen
        return self._initialized_value

    def side_effects_allowed(self) -> bool:
        return self.training and not self.updates_frozen and not torch.is_inference_mode_enabled()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Checkpoints written before a buffer existed load with its "never measured" value.
        for name, value in _ADDED_BUFFERS.items():
            if prefix + name not in state_dict and prefix + "codebook" in state_dict:
                state_dict[prefix + name] = torch.full_like(getattr(self, name), value)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # ---------------------------------------------------------------- forward
    def forward(self, residual: torch.Tensor, row_mask: torch.Tensor | None = None) -> LevelOutput:
        """This level alone. residual: (N, dim) rows; row_mask: (N,) bool, the rows that use it."""
        with full_precision(residual.device):
            step = LevelsStep([self], residual.shape[0], residual.device)
            x = self.in_proj(residual.float())
            codes = step.search(0, x, row_mask)
            out = self.emit(x, codes, None if row_mask is None else row_mask.float())
            step.finish(codes[:, None], None if row_mask is None else row_mask[:, None])
        return out

    def emit(self, x: torch.Tensor, codes: torch.Tensor, row_weight: torch.Tensor | None = None,
             straight_through: bool = False) -> LevelOutput:
        """Output and losses of projected rows x (N, codebook_dim) coded as `codes`. The codewords
        carry the codebook's gradient when update="gradient"; the lookup itself never does.
        `straight_through`: the output's gradient goes on to x (DAC's per-level form); its value
        is the codeword's exactly (x - sg(x) is zero)."""
        # index_select, not F.embedding: its backward is an index_add (embedding's CUDA backward
        # sorts and counts the codes, which may read back to the host).
        q = self.codebook.index_select(0, codes)
        commit = commitment_loss(x, q, row_weight)
        cb_loss = codebook_loss(x, q, row_weight) if self.update == "gradient" else None
        emitted = q.detach() + (x - x.detach()) if straight_through else q.detach()
        return LevelOutput(self.out_proj(emitted), codes, commit, cb_loss)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (N,) to their contribution in `dim` space (what forward outputs)."""
        return self.out_proj(F.embedding(codes, self.codebook.detach()))

    # ------------------------------------------------------- training-only updates
    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor, row_mask: torch.Tensor | None = None) -> bool:
        """k-means init from the rows that use this level; False when there are none (yet).

        Runs once per level, at its first training step, so reading the row count back is fine.
        Under torch.distributed the rows are every rank's and rank 0's result is kept, so every
        rank starts from the same codebook, and decides alike whether there are rows."""
        rows = x.detach().float()
        if row_mask is not None:
            rows = rows[row_mask]
        rows = gather_rows(rows[torch.isfinite((rows * rows).sum(dim=1))])  # usable as codewords
        if rows.shape[0] == 0:
            return False
        means, counts = broadcast_from_first(*kmeans(rows, self.codebook_size, self.kmeans_iters, self.metric))
        self.codebook.data.copy_(means)
        self.initial_codebook.copy_(means)
        self.cluster_size.copy_(counts)
        if self.update == "ema":
            # Sum of assigned inputs = mean * count. Storing the means alone (EnCodec,
            # vector-quantize-pytorch #66) shrinks every code by its count at the next EMA step.
            self.embed_sum.copy_(means * counts.unsqueeze(1))
        low, high = torch.aminmax(rows)
        self.input_scale.copy_(torch.maximum(high, -low))
        self.initialized.fill_(True)
        self._initialized_seen, self._initialized_value = (self.initialized._version,
                                                           self.initialized.data_ptr()), True
        return True

    # ---------------------------------------------------------------- statistics
    def dead_code_mask(self) -> torch.Tensor:
        return self.cluster_size < max(self.dead_code_threshold, DEAD_USAGE_FLOOR)

    @torch.no_grad()
    def stats(self, level: int, active: bool, histogram: torch.Tensor | None = None) -> LevelStats:
        """A snapshot for loggers: reads values back to the host (logging steps only). `histogram`:
        the usage to describe instead of `last_histogram` (e.g. summed over the ranks)."""
        book = self.codebook.detach().float()
        norms = book.norm(dim=1)
        hist = self.last_histogram if histogram is None else histogram
        if hist is None:
            hist = torch.zeros(self.codebook_size, dtype=torch.long)
        hist = hist.detach().cpu()
        return LevelStats(
            level=level,
            active=active,
            initialized=bool(self.initialized),
            histogram=hist,
            perplexity=perplexity(hist),
            codes_used=int((hist > 0).sum()),
            ema_usage=self.cluster_size.detach().cpu().clone(),
            dead_codes=int(self.dead_code_mask().sum()),
            norm_mean=float(norms.mean()),
            norm_std=float(norms.std()) if norms.numel() > 1 else 0.0,
            norm_min=float(norms.min()),
            norm_max=float(norms.max()),
            value_std=float(book.std()),
            value_min=float(book.min()),
            value_max=float(book.max()),
            distance_from_init=distance_from_init(book, self.initial_codebook),
            trained_steps=int(self.trained_steps),
            input_scale=float(self.input_scale),
            rejected_updates=int(self.rejected_updates),
        )
