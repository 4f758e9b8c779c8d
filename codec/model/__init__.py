"""The codec model: SEANet-style encoder/decoder around the residual quantizer."""

from codec.model.codec import Codec, CodecOutput
from codec.model.config import QuantizerConfig, StructureConfig

__all__ = ["Codec", "CodecOutput", "QuantizerConfig", "StructureConfig"]
