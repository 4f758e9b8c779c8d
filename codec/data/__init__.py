"""Audio data: synthetic speech-like clips by default, or crops of a folder of audio files.

AudioDataModule is imported on first use, so importing the data sets does not load
Lightning (several seconds).
"""

from codec.data.bad_files import SkippedAudioWarning
from codec.data.folder import AudioFolder
from codec.data.sampler import ResumableSampler
from codec.data.split import FolderSplit, split_folder
from codec.data.synthetic import SyntheticSpeech

__all__ = ["AudioDataModule", "AudioFolder", "FolderSplit", "ResumableSampler", "SkippedAudioWarning",
           "SyntheticSpeech", "split_folder"]


def __getattr__(name: str):
    if name == "AudioDataModule":
        from codec.data.datamodule import AudioDataModule

        return AudioDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
