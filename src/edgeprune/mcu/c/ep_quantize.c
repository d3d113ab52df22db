/* QUANTIZE (float32 -> int8) and DEQUANTIZE (int8 -> float32) at the graph's ends, with the arithmetic of
 * TFLite's reference AffineQuantize and Dequantize, so that float inputs and outputs equal TFLM's bit for bit:
 *   quantize:   q = clamp(round_half_away(x / scale) + zero_point, -128, 127), the division in float;
 *   dequantize: x = (float)(q - zero_point) * scale. TFLM multiplies in double and rounds to float; the
 *               double product of a float and an integer below 2^9 is exact, so one float multiply rounds alike.
 */
#include "ep_kernels.h"

/* The clamp to [-128, 127] - zero_point makes any |x / scale| above 512 saturate alike; clamping there first keeps
 * the rounding exact and the conversion defined (NaN goes to the low end). Beyond 2^31 * scale, TFLM's x86 build
 * converts out of range (undefined in C++); this saturates, as Arm's conversion does. */
#define EP_QUANTIZE_LIMIT 512.0f

/* Round half away from zero (std::round) of |x| <= EP_QUANTIZE_LIMIT: the truncation and the fraction it leaves
 * are both exact in float. */
static int32_t ep_round_half_away(float x) {
    int32_t whole = (int32_t)x;
    float fraction = x - (float)whole;
    if (fraction >= 0.5f) {
        whole += 1;
    } else if (fraction <= -0.5f) {
        whole -= 1;
    }
    return whole;
}

int ep_quantize(int32_t n, const float *in, float scale, int32_t zero_point, int8_t *out) {
    if (n < 0 || !(scale > 0.0f)) {
        return EP_ERROR_DIMS;
    }
    for (int32_t i = 0; i < n; i++) {
        float x = in[i] / scale;
        if (!(x >= -EP_QUANTIZE_LIMIT)) {
            x = -EP_QUANTIZE_LIMIT;
        } else if (x > EP_QUANTIZE_LIMIT) {
            x = EP_QUANTIZE_LIMIT;
        }
        int32_t q = ep_round_half_away(x) + zero_point;
        out[i] = (int8_t)(q < -128 ? -128 : (q > 127 ? 127 : q));
    }
    return EP_OK;
}

int ep_dequantize(int32_t n, const int8_t *in, float scale, int32_t zero_point, float *out) {
    if (n < 0) {
        return EP_ERROR_DIMS;
    }
    for (int32_t i = 0; i < n; i++) {
        out[i] = (float)((int32_t)in[i] - zero_point) * scale;
    }
    return EP_OK;
}
