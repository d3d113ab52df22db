"""On the microcontroller: the C engine generated from an int8 .tflite, built for Cortex-M and run in QEMU.

The engine: lowering to kernel steps (lowering), the int32 bounds it proves for every layer (bounds), sparse
weight formats (sparse), the cost model (cost) and the choice of dense or sparse per layer and of a weight
budget's exchange rate (choice), the kernels' scratch sizes read from their C header (kernel_sizes), the static
arena plan (arena) and the C writer (codegen); the kernels are package data under ``c/``, one op per file. On the board: the cross compiler, QEMU and the targets
(toolchain), running a harness firmware and reading its report (qemu), and measuring a generated
engine on an emulated board against TFLite Micro (measure); the startup code, linker script and
harness are package data under ``board/``. Planning for the device: the engine's instructions and flash
predicted for a sparsity plan without QEMU (predict), and instruction or flash targets met by
planning on the prediction and checking in QEMU (target).
"""

from .codegen import export_c
from .cost import conv_cost, depthwise_cost, fc_cost
from .lowering import lower
from .measure import EngineMismatch, load_inputs, mcu_table, measure_engine, measure_on_mcu, measure_tflite, random_inputs
from .predict import meet_target, predict_model, unit_costs
from .units import parse_bytes
from .target import plan_for_device
from .toolchain import TARGETS, get_target

__all__ = [
    "TARGETS", "EngineMismatch", "conv_cost", "depthwise_cost", "export_c", "fc_cost", "get_target", "load_inputs", "lower", "mcu_table",
    "measure_engine", "measure_on_mcu", "measure_tflite", "meet_target", "parse_bytes", "plan_for_device", "predict_model", "random_inputs", "unit_costs",
]
