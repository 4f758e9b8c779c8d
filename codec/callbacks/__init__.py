"""Lightning callbacks that watch the quantizers of any LightningModule."""

from codec.callbacks.amplitude import AmplitudeMonitor
from codec.callbacks.codebook_monitor import CodebookMonitor
from codec.callbacks.discovery import find_quantizers
from codec.callbacks.progressive import ProgressiveRVQ
from codec.callbacks.summary import RunSummary
from codec.callbacks.usage_consistency import UsageConsistencyMonitor
from codec.callbacks.verdict import Verdict, read_summary

__all__ = ["AmplitudeMonitor", "CodebookMonitor", "ProgressiveRVQ", "RunSummary", "UsageConsistencyMonitor",
           "Verdict", "find_quantizers", "read_summary"]
