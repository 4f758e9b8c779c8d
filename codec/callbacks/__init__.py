"""Lightning callbacks that watch the quantizers of any LightningModule."""

from codec.callbacks.discovery import find_quantizers
from codec.callbacks.progressive import ProgressiveRVQ

__all__ = ["ProgressiveRVQ", "find_quantizers"]
