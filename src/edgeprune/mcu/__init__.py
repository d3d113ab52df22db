"""On the microcontroller: the C engine generated from an int8 .tflite, built for Cortex-M and run in QEMU.

``toolchain`` finds the cross compiler and QEMU and builds for the targets; ``qemu`` runs a
harness firmware and reads its report; ``measure`` measures a generated engine on an emulated
board against TFLite Micro. The C startup code, linker script and harness are in ``board/``.
"""

from .measure import mcu_table, measure_engine, measure_on_mcu
from .toolchain import TARGETS, get_target

__all__ = ["TARGETS", "get_target", "mcu_table", "measure_engine", "measure_on_mcu"]
