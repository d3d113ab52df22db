/* The int8 ADD of two tensors of one shape (TFLite's reference arithmetic, bit for bit). */
#include "ep_kernels.h"
#include "ep_requant.h"

/* Each input's term of the sum depends on its int8 value alone: a table of the 256 terms per input,
 * computed once per call into `tables` (EP_ADD_TABLE_WORDS words), leaves two loads, one
 * requantization and the clamp per element. The terms are stored shifted by the output multiplier's
 * left shift (a sum of shifted terms is the shifted sum, modulo 2^32 as TFLite's int32 shift). */
#define EP_ADD_LOOP(n, a, b, ta, tb, mo, zo, lo, hi, out)                                                  \
    do {                                                                                                   \
        int32_t ep_i;                                                                                      \
        for (ep_i = 0; ep_i < (n); ep_i++) {                                                               \
            (out)[ep_i] = ep_requantize_mq((int32_t)((ta)[(a)[ep_i]] + (tb)[(b)[ep_i]]), (mo), (zo), (lo), (hi)); \
        }                                                                                                  \
    } while (0)

/* The sum of the two terms requantized as ep_fast_apply does and clamped to [-128, 127] (an output clamp of all of
 * int8 and a right shift from 2 to 23: ep_requant.h), written out for the DSP cores with EP_FAST_OUTPUT. */
static void ep_add_fast(int32_t n, const int8_t *a, const int8_t *b, const uint32_t *ta, const uint32_t *tb,
                        int32_t multiplier, int32_t nudge_zp, int32_t fast, int8_t *out) {
    int32_t i;
    for (i = 0; i < n; i++) {
        const int32_t acc = (int32_t)(ta[a[i]] + tb[b[i]]);
#if defined(__ARM_FEATURE_DSP) && defined(__GNUC__)
        uint32_t t, h;
        __asm__ volatile(EP_FAST_OUTPUT("%[acc]", "[%[o]]")
                         : [t] "=&r"(t), [h] "=&r"(h)
                         : [acc] "r"(acc), [m] "r"(multiplier), [nz] "r"(nudge_zp), [sh] "r"(fast), [o] "r"(out + i)
                         : "memory");
#else
        out[i] = (int8_t)ep_clamp32(ep_fast_apply(acc, multiplier, nudge_zp, fast), -128, 127);
#endif
    }
}

/* out may be a or b: each element is read before it is written, so a, b and out are not restrict. */
int ep_add(int32_t n, const int8_t *a, const int8_t *b, const ep_add_params *p, uint32_t *restrict tables,
           int32_t table_words, int8_t *out) {
    uint32_t *ta = tables + 128, *tb = ta + 256;
    const ep_mq m1 = ep_mq_make(p->input1_multiplier, p->input1_shift);
    const ep_mq m2 = ep_mq_make(p->input2_multiplier, p->input2_shift);
    ep_mq mo = ep_mq_make(p->output_multiplier, p->output_shift);
    const int32_t zo = p->output_offset, lo = p->act_min, hi = p->act_max;
    int32_t i;
    if (table_words < EP_ADD_TABLE_WORDS) {
        return EP_ERROR_DIMS;
    }
    for (i = -128; i < 128; i++) {
        ta[i] = (uint32_t)ep_mq_apply((int32_t)((uint32_t)(p->input1_offset + i) << p->left_shift), m1) << mo.left;
        tb[i] = (uint32_t)ep_mq_apply((int32_t)((uint32_t)(p->input2_offset + i) << p->left_shift), m2) << mo.left;
    }
    mo.left = 0;
    if (lo <= -128 && hi >= 127 && ep_fast_shift(p->output_shift)) {  /* the common case: ep_fast_apply, SSAT */
        ep_add_fast(n, a, b, ta, tb, p->output_multiplier, ep_fast_nudge(p->output_shift, zo),
                    ep_fast_shift(p->output_shift), out);
    } else if (mo.right) {  /* the same loop twice, so that each knows which rounding ep_mq_apply takes */
        EP_ADD_LOOP(n, a, b, ta, tb, mo, zo, lo, hi, out);
    } else {
        EP_ADD_LOOP(n, a, b, ta, tb, mo, zo, lo, hi, out);
    }
    return EP_OK;
}
