"""One forward of several levels: shared lookup tables, per-level search, one batched update.

    step = LevelsStep(levels, num_rows, device)   # stacks the codebooks once, prepares every table
    codes_i = step.search(i, x_i, row_mask_i)     # per level: k-means init (first step), search, statistics
    step.finish(codes, used)                      # histograms of every level; in training the update

Nothing here reads a value back to the host after a level's k-means init: the init flag is a
Python mirror of the `initialized` buffer, the statistics stay on the device, and the update is
a fixed set of masked kernels over all levels at once (`codec.quantize.updates`).

Under torch.distributed a training step's k-means init and statistics are reduced across ranks
(`codec.quantize.distributed`), for every level the step runs, so every rank applies the same update.

The stacked codebooks `step.books` are copies taken before any update of this step, so callers
may keep them for the backward pass (`codec.quantize.closed_form`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from codec.quantize.distributed import reduce_statistics, start_alike_
from codec.quantize.lookup import prepare, search
from codec.quantize.updates import (
    StatisticsCollector,
    code_histograms,
    stacked_state,
    updated_state,
    write_back_,
)

_compiled_update = None


def _update_function(compile: bool):
    """`updated_state`, or its torch.compile'd form (built once, on first use)."""
    global _compiled_update
    if not compile:
        return updated_state
    if _compiled_update is None:
        _compiled_update = torch.compile(updated_state, dynamic=False)
    return _compiled_update


class LevelsStep:
    def __init__(self, levels: Sequence, num_rows: int, device: torch.device):
        self.levels = list(levels)
        first = self.levels[0]  # a stack's levels share their settings and training flags
        self.codebook_size = first.codebook_size
        self.chunk_rows = first.chunk_rows
        self.metric = first.metric
        self.updating = first.side_effects_allowed()
        if self.updating:
            start_alike_(self.levels)
        with torch.no_grad():
            self.books = torch.stack([level.codebook.detach() for level in self.levels]).float()
            self.keys, self.bias = prepare(self.books, self.metric)
        self.collector = (StatisticsCollector(first.rule, len(self.levels), num_rows, self.codebook_size,
                                              self.books.shape[-1], device) if self.updating else None)

    def search(self, i: int, x: torch.Tensor, row_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (N,) of level i for its projected rows x (N, D); row_mask (N,) bool: the rows that
        use the level (None: all). In training, also its init (once) and its statistics."""
        level = self.levels[i]
        if self.updating and not level.is_initialized and level.init_from_data(x, row_mask):
            self._refresh(i)
        codes = search(x, self.keys[i], None if self.bias is None else self.bias[i], self.chunk_rows)
        if self.updating and level.is_initialized:
            self.collector.add(i, x.detach().float(), codes, row_mask)
        return codes

    @torch.no_grad()
    def _refresh(self, i: int) -> None:
        """Level i's codebook changed (its k-means init): update its slice of the tables."""
        self.books[i].copy_(self.levels[i].codebook)
        keys, bias = prepare(self.books[i], self.metric)
        self.keys[i].copy_(keys)  # a view of books for "euclidean": copying it onto itself is harmless
        if bias is not None:
            self.bias[i].copy_(bias)

    @torch.no_grad()
    def finish(self, codes: torch.Tensor, used: torch.Tensor | None = None) -> None:
        """codes (N, L) of every level of the step, `used` (N, L) bool the rows that used each level
        (None: all). Sets each level's `last_histogram`; in training applies the update."""
        histograms = code_histograms(codes, self.codebook_size, used)
        for level, histogram in zip(self.levels, histograms, strict=True):
            level.last_histogram = histogram
        if self.collector is None or not self.collector.levels:
            return
        trained = self.collector.levels
        levels, books = [self.levels[i] for i in trained], self.books
        if len(trained) < len(self.levels):  # a level met its first rows only now: rare
            index = torch.tensor(trained, device=books.device)
            books, histograms = books.index_select(0, index), histograms.index_select(0, index)
        stats = reduce_statistics(self.collector.finish(histograms))
        result = _update_function(levels[0].compile_update)(stacked_state(levels, books), stats, levels[0].rule)
        write_back_(levels, result.state)
        for level, reseeded, absmax in zip(levels, result.reseeded, result.input_absmax, strict=True):
            level.last_dead_count = reseeded
            level.last_input_absmax = absmax
