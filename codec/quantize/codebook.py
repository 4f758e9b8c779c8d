"""One level of the residual stack: a codebook, its lookup, its losses and its training-only updates.

Works on rows: inputs are (N, dim) with N = batch * frames. The optional
projection (DAC's factorised codes) maps `dim` to a small `codebook_dim`
where the lookup, the losses and the EMA live.

Gradients, stated once (tests check each):
- commitment loss mse(x, sg(q)) reaches the encoder (and in_proj), never the codebook;
- codebook loss mse(sg(x), q) trains the codebook when update="gradient";
- with update="ema" the codebook is a buffer and moves by EMA of the assigned inputs;
- the level's output out_proj(sg(q)) trains out_proj (and nothing upstream).

Training-only side effects (k-means init, EMA, dead-code replacement, usage
counts) run only when `self.training`, updates are not frozen, and we are not
under torch.inference_mode(). Eval mode touches no buffer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from codec.quantize.ema import ema_update_
from codec.quantize.kmeans import kmeans, sample_rows
from codec.quantize.lookup import nearest_codes
from codec.quantize.losses import codebook_loss, commitment_loss
from codec.quantize.stats import LevelStats, distance_from_init, perplexity

UPDATES = ("ema", "gradient")
INITS = ("kmeans", "random")

# Usage below this counts as dead in statistics when replacement is off (the reports' "<0.001 usage").
DEAD_USAGE_FLOOR = 1e-3


class LevelOutput(NamedTuple):
    output: torch.Tensor  # (N, dim) contribution of this level, out_proj(sg(q))
    x: torch.Tensor  # (N, codebook_dim) projected input
    q: torch.Tensor  # (N, codebook_dim) chosen codewords
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
    ):
        super().__init__()
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim or dim
        self.metric = metric
        self.update = update
        self.decay = decay
        self.init = init
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.eps = eps
        self.chunk_rows = chunk_rows
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

        self.last_histogram: torch.Tensor | None = None  # codes chosen in the last forward
        self.last_dead_count: int | None = None  # codes replaced in the last training forward
        self.last_input_absmax: torch.Tensor | None = None  # largest |value| of the last training inputs (sampled)

    # ------------------------------------------------------------------ forward
    def side_effects_allowed(self) -> bool:
        return self.training and not self.updates_frozen and not torch.is_inference_mode_enabled()

    def forward(self, residual: torch.Tensor, row_weight: torch.Tensor | None = None) -> LevelOutput:
        """residual: (N, dim) float32 rows. row_weight: (N,) 1 for rows that use this level, 0 otherwise."""
        x = self.in_proj(residual)
        codes, q = self.assign(x, row_weight)
        commit = commitment_loss(x, q, row_weight)
        cb_loss = codebook_loss(x, q, row_weight) if self.update == "gradient" else None
        return LevelOutput(self.out_proj(q.detach()), x, q, codes, commit, cb_loss)

    def assign(self, x: torch.Tensor, row_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, codewords) for projected rows x; in training also init, EMA, replacement and usage.

        The codewords are gathered before this step's updates (with the codebook's gradient when
        update="gradient"); the lookup itself never carries a gradient.
        """
        codes, q, _ = self.assign_keeping_codebook(x, row_weight)
        return codes, q

    def assign_keeping_codebook(
        self, x: torch.Tensor, row_weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`assign`, plus the codebook the codewords were gathered from (detached; a copy only when
        this step's updates change the codebook in place), so callers can re-gather them later
        instead of keeping (N, dim) codewords alive."""
        x = x.detach()
        update = self.side_effects_allowed()
        used_rows = x if row_weight is None else x[row_weight > 0]
        if update and not bool(self.initialized) and used_rows.shape[0] > 0:
            self._init_from_data(used_rows)
        book = self.codebook.detach()
        codes = nearest_codes(x, book, self.metric, self.chunk_rows)
        q = F.embedding(codes, self.codebook)
        used_codes = codes if row_weight is None else codes[row_weight > 0]
        self.last_histogram = torch.bincount(used_codes, minlength=self.codebook_size)
        if update and used_rows.shape[0] > 0:
            book = book.clone()  # K x dim, small next to the rows
            self._train_step(used_rows, used_codes, self.last_histogram)
        return codes, q, book

    @property
    def projected(self) -> bool:
        return not isinstance(self.in_proj, nn.Identity)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (N,) to their contribution in `dim` space (what forward outputs)."""
        return self.out_proj(F.embedding(codes, self.codebook.detach()))

    # ------------------------------------------------------- training-only updates
    @torch.no_grad()
    def _init_from_data(self, rows: torch.Tensor) -> None:
        means, counts = kmeans(rows.float(), self.codebook_size, self.kmeans_iters, self.metric)
        self.codebook.data.copy_(means)
        self.initial_codebook.copy_(means)
        self.cluster_size.copy_(counts)
        if self.update == "ema":
            # Sum of assigned inputs = mean * count. Storing the means alone (EnCodec,
            # vector-quantize-pytorch #66) shrinks every code by its count at the next EMA step.
            self.embed_sum.copy_(means * counts.unsqueeze(1))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _train_step(self, rows: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor) -> None:
        rows = rows.float()
        # The input scale the codebook monitor compares against: a strided sample of about 1024
        # rows is enough. aminmax is 20x cheaper than a max-abs vector norm.
        low, high = torch.aminmax(rows[:: max(1, rows.shape[0] // 1024)])
        self.last_input_absmax = torch.maximum(high, -low)
        if self.update == "ema":
            ema_update_(self.codebook, self.cluster_size, self.embed_sum, rows, codes, self.decay, self.eps)
        else:  # usage only, for dead-code replacement and statistics
            self.cluster_size.lerp_(counts.to(self.cluster_size.dtype), 1.0 - self.decay)
        self._replace_dead_codes(rows)
        self.trained_steps += 1

    @torch.no_grad()
    def _replace_dead_codes(self, rows: torch.Tensor) -> None:
        """Move codes whose EMA usage fell below the threshold onto recent inputs.

        Runs *after* the EMA normalisation, and rewrites the EMA state of the moved
        codes too, so the next EMA step keeps them where they were put (EnCodec
        replaces before its normalisation overwrites the codebook: encodec #61).
        """
        if self.dead_code_threshold <= 0:
            self.last_dead_count = 0
            return
        # Indices once, then index_copy_: three boolean-mask writes cost a nonzero() each.
        dead = (self.cluster_size < self.dead_code_threshold).nonzero().squeeze(1)
        n_dead = dead.numel()
        self.last_dead_count = n_dead
        if n_dead == 0:
            return
        fresh = sample_rows(rows, n_dead)
        self.codebook.data.index_copy_(0, dead, fresh.to(self.codebook.dtype))
        # A re-seeded code gets half the threshold as mass: below it, so it still counts
        # as dead until inputs choose it, and non-zero, so EMA keeps it in place.
        mass = 0.5 * self.dead_code_threshold
        self.cluster_size.index_fill_(0, dead, mass)
        if self.update == "ema":
            self.embed_sum.index_copy_(0, dead, fresh * mass)

    # ---------------------------------------------------------------- statistics
    def dead_code_mask(self) -> torch.Tensor:
        return self.cluster_size < max(self.dead_code_threshold, DEAD_USAGE_FLOOR)

    @torch.no_grad()
    def stats(self, level: int, active: bool) -> LevelStats:
        book = self.codebook.detach().float()
        norms = book.norm(dim=1)
        hist = self.last_histogram
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
        )
