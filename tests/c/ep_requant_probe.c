/* Test-only: TFLite's MultiplyByQuantizedMultiplier as the kernels compute it (ep_requant.h), exported for
 * tests/test_mcu_engine.py to call through ctypes. Not part of the engine. */
#include <stdint.h>

#include "ep_requant.h"

int32_t ep_probe_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift);

int32_t ep_probe_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift) {
    return ep_mbqm(x, multiplier, shift);
}
