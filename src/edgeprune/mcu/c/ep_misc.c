/* Element moves and activations: TRANSPOSE (up to 4-D), RELU (requantized to the output's scale) and the
 * clamp RELU6 and a copy run as. */
#include "ep_kernels.h"
#include "ep_requant.h"

int ep_transpose(const int32_t in_shape[4], const int32_t perm[4], const int8_t *in, int8_t *out) {
    int32_t stride[4], out_shape[4], i[4], k;
    stride[3] = 1;
    for (k = 2; k >= 0; k--) {
        stride[k] = stride[k + 1] * in_shape[k + 1];
    }
    for (k = 0; k < 4; k++) {
        out_shape[k] = in_shape[perm[k]];
    }
    for (i[0] = 0; i[0] < out_shape[0]; i[0]++) {
        for (i[1] = 0; i[1] < out_shape[1]; i[1]++) {
            for (i[2] = 0; i[2] < out_shape[2]; i[2]++) {
                for (i[3] = 0; i[3] < out_shape[3]; i[3]++) {
                    *out++ = in[i[0] * stride[perm[0]] + i[1] * stride[perm[1]] + i[2] * stride[perm[2]] +
                                i[3] * stride[perm[3]]];
                }
            }
        }
    }
    return EP_OK;
}

int ep_relu(int32_t n, const int8_t *restrict in, int32_t input_zero_point, int32_t output_zero_point, int32_t multiplier,
            int32_t shift, int32_t act_min, int32_t act_max, int8_t *restrict out) {
    int32_t i;
    for (i = 0; i < n; i++) {
        out[i] = (int8_t)ep_clamp32(output_zero_point + ep_mbqm(in[i] - input_zero_point, multiplier, shift),
                                    act_min, act_max);
    }
    return EP_OK;
}

int ep_clamp(int32_t n, const int8_t *restrict in, int32_t lo, int32_t hi, int8_t *restrict out) {
    int32_t i;
    for (i = 0; i < n; i++) {
        out[i] = (int8_t)ep_clamp32(in[i], lo, hi);
    }
    return EP_OK;
}
