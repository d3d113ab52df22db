"""Exports: pure quantization arithmetic (quantize), weight sharing (centroids), the compressed .epz format (epz),
ONNX for onnxruntime (onnx), fully int8 TFLite for TensorFlow Lite Micro (tflite over int8_graph, with tflite_convert,
tflite_write, tflite_read and the runtime tflm) and its C array (c_source)."""

from .c_source import BOARDS, fits_on, write_c_source
from .centroids import share_weights
from .epz import load_compressed, save_compressed
from .onnx import compare_onnx, evaluate_onnx, export_onnx, quantize_onnx
from .tflite import calibration_images, export_tflite
from .tflm import evaluate_tflite

__all__ = [
    "BOARDS", "calibration_images", "compare_onnx", "evaluate_onnx", "evaluate_tflite", "export_onnx", "export_tflite",
    "fits_on", "load_compressed", "quantize_onnx", "save_compressed", "share_weights", "write_c_source",
]
