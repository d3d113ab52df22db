"""The C engine for microcontrollers, generated from an int8 .tflite: lowering to kernel steps (lowering),
sparse weight formats (sparse), the cost model that picks dense or sparse per layer (cost), the static
arena plan (arena) and the C writer (codegen). The kernels are package data under ``c/``."""

from .codegen import export_c
from .cost import conv_cost, depthwise_cost, fc_cost
from .lowering import lower

__all__ = ["conv_cost", "depthwise_cost", "export_c", "fc_cost", "lower"]
