"""Exports: pure quantization arithmetic (quantize), weight sharing (centroids), the compressed .epz format (epz)."""

from .centroids import share_weights
from .epz import load_compressed, save_compressed

__all__ = ["load_compressed", "save_compressed", "share_weights"]
