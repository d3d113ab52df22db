/* The int8 softmax along the last axis, with gemmlowp's fixed-point exp and reciprocal as TFLite's int8
 * reference (output scale 1/256, zero point -128). The sum of exps is Q12.19: the exporter keeps depth
 * below 4096, so that it never overflows. */
#include "ep_kernels.h"
#include "ep_requant.h"


/* x * 2^e saturated (gemmlowp's SaturatingRoundingMultiplyByPOT for e > 0). */
static int32_t ep_sat_lshift(int32_t x, int32_t e) {
    const int32_t threshold = (int32_t)((1u << (31 - e)) - 1u);
    if (x > threshold) {
        return INT32_MAX;
    }
    if (x < -threshold) {
        return INT32_MIN;
    }
    return (int32_t)((uint32_t)x << e);
}

/* exp(a) for a in [-1/4, 0), a and the result in Q0.31. */
static int32_t ep_exp_quarter(int32_t a) {
    const int32_t exp_minus_one_eighth = 1895147668, one_third = 715827883;
    const int32_t x = a + (1 << 28);
    const int32_t x2 = ep_srdhm(x, x), x3 = ep_srdhm(x2, x), x4 = ep_srdhm(x2, x2);
    const int32_t x4_over_4 = ep_rounding_divide_by_pot(x4, 2);
    const int32_t poly = ep_rounding_divide_by_pot(ep_srdhm(x4_over_4 + x3, one_third) + x2, 1);
    return exp_minus_one_eighth + ep_srdhm(exp_minus_one_eighth, x + poly);
}

/* exp(a) for a <= 0 in Q5.26; the result in Q0.31. */
static int32_t ep_exp_negative(int32_t a) {
    static const int32_t multipliers[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    const int32_t quarter = 1 << 24;
    const int32_t a_mod = (a & (quarter - 1)) - quarter;
    const int32_t remainder = a_mod - a;
    int32_t result = ep_exp_quarter(ep_sat_lshift(a_mod, 5));
    int32_t k;
    for (k = 0; k < 7; k++) {  /* exp(-2^(k-2)) for each set bit of the remainder */
        if (remainder & (1 << (24 + k))) {
            result = ep_srdhm(result, multipliers[k]);
        }
    }
    return a == 0 ? INT32_MAX : result;
}

/* 1 / (1 + a) for a in [0, 1) in Q0.31, by Newton-Raphson in Q2.29. */
static int32_t ep_one_over_one_plus(int32_t a) {
    const int64_t sum = (int64_t)a + INT32_MAX;
    const int32_t half_denominator = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);
    int32_t x = 1515870810 + ep_srdhm(half_denominator, -1010580540);
    int32_t i;
    for (i = 0; i < 3; i++) {
        const int32_t one_minus = (1 << 29) - ep_srdhm(half_denominator, x);
        x = x + ep_sat_lshift(ep_srdhm(x, one_minus), 2);
    }
    return ep_sat_lshift(x, 1);
}

static int32_t ep_clz(uint32_t x) {
    int32_t n = 0;
    if (x == 0) {
        return 32;
    }
    while (!(x & 0x80000000u)) {
        x <<= 1;
        n++;
    }
    return n;
}

int ep_softmax(int32_t rows, int32_t depth, const int8_t *in, const ep_softmax_params *p, int8_t *out) {
    int32_t r, c;
    for (r = 0; r < rows; r++, in += depth, out += depth) {
        int32_t max = -128, sum = 0, headroom, bits_over_unit, scale;
        for (c = 0; c < depth; c++) {
            max = in[c] > max ? in[c] : max;
        }
        for (c = 0; c < depth; c++) {
            const int32_t diff = in[c] - max;
            if (diff >= p->diff_min) {
                const int32_t scaled = ep_srdhm((int32_t)((uint32_t)diff << p->input_left_shift), p->input_multiplier);
                sum += ep_rounding_divide_by_pot(ep_exp_negative(scaled), 12);  /* Q12.19 accumulator */
            }
        }
        headroom = ep_clz((uint32_t)sum);
        bits_over_unit = 12 - headroom;
        scale = ep_one_over_one_plus((int32_t)(((uint32_t)sum << headroom) - (1u << 31)));
        for (c = 0; c < depth; c++) {
            const int32_t diff = in[c] - max;
            if (diff >= p->diff_min) {
                const int32_t scaled = ep_srdhm((int32_t)((uint32_t)diff << p->input_left_shift), p->input_multiplier);
                const int32_t e = ep_exp_negative(scaled);
                const int32_t v = ep_rounding_divide_by_pot(ep_srdhm(scale, e), bits_over_unit + 31 - 8) - 128;
                out[c] = (int8_t)ep_clamp32(v, -128, 127);
            } else {
                out[c] = -128;
            }
        }
    }
    return EP_OK;
}
