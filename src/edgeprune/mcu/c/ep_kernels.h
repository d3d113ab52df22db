/* edgeprune int8 kernels for microcontrollers (C99, no heap, no libc beyond <stdint.h>/<string.h>).
 *
 * Numerics follow TensorFlow Lite's int8 reference kernels (per-channel multiplier and shift,
 * double rounding), so outputs equal TFLite Micro's bit for bit. Tensors are NHWC with batch 1.
 * Every kernel returns EP_OK or a negative status.
 *
 * Convolutions run VALID on an input already padded with its zero point (the generated model
 * inserts ep_pad before them), and their bias already holds -input_zero_point * sum(weights),
 * so the inner loops are plain sums of input * weight. They compute four output pixels at a time
 * (a fused 2x2 max pool's window, or four of a row) from a scratch copy of the four input windows:
 * 16-bit pairs for the dense kernel (SMLAD on four weights), one word of four int8 pixels per
 * window position for the sparse one (SXTB16, then SMLABB/SMLATB per non-zero weight). The DSP
 * instructions are used behind __ARM_FEATURE_DSP; elsewhere portable C computes the same, with no
 * signed overflow for any input when the exporter's bounds hold (it checks every layer's worst-case
 * accumulator, shifts and sizes before it writes the model).
 *
 * This is the public header. The kernels live one op per file (ep_<op>.c); ep_requant.h, ep_conv_group.h
 * and ep_sparse_runs.h are their private helpers.
 */
#ifndef EP_KERNELS_H
#define EP_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EP_OK 0
#define EP_ERROR_DIMS (-1)

/* Requantization of an int32 accumulator to int8: a multiplier and shift per output channel. */
typedef struct {
    const int32_t *multiplier;
    const int32_t *shift;
    int32_t output_zero_point;
    int32_t act_min;
    int32_t act_max;
} ep_requant;

/* Convolution geometry on the padded input (VALID). */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t dil_h, dil_w;
    int32_t depth_multiplier;  /* depthwise only */
    int32_t pool;              /* 1: a 2x2 stride-2 max pool is fused (output (out_h/2) x (out_w/2)) */
} ep_conv_dims;

/* Sparse convolution and fully connected weights: one run per output channel over its weights in
 * the filter's order (ky, kx, ci for a convolution; the input vector for fully connected). A run is
 * count[o] (or count8[o]) entries of `bits` bits (4: two to a byte, low nibble first; or 8), starting
 * on a byte. A cursor starts at the run's first weight: an entry g moves it g places, multiplies there
 * by the next value and steps one place on, except the 4-bit escape 15, which moves it 15 places and
 * multiplies nothing. 8-bit entries have no escape: a longer gap is bridged by entries 255 whose
 * value is 0, so their loop never tests an entry. */
typedef struct {
    int32_t bits;
    const uint16_t *count;
    const uint8_t *count8; /* instead of count (NULL then) when every run has at most 255 entries */
    const uint8_t *nibbles;
    const int8_t *values;
    /* look-up-table values instead of `values` (table NULL otherwise): per run, 4-bit codes two to a
     * byte (low nibble first, each run starting on a byte) into the run's row of table_size int8 values */
    const uint8_t *codes;
    const int8_t *table;
    int32_t table_size;
} ep_sparse;

/* Sparse depthwise weights: per output channel count[co] taps, each a uint8 tap index
 * ky * k_w + kx and an int8 value. */
typedef struct {
    const uint8_t *count;
    const uint8_t *taps;
    const int8_t *values;
} ep_sparse_dw;

typedef struct {
    int32_t in_h, in_w, c;
    int32_t out_h, out_w;
    int32_t k_h, k_w, stride_h, stride_w, pad_h, pad_w;
    int32_t act_min, act_max;
} ep_pool_dims;

typedef struct {
    int32_t in_h, in_w, c;
    int32_t top, left, bottom, right;
} ep_pad_dims;

typedef struct {
    int32_t input1_offset, input2_offset, output_offset;
    int32_t left_shift;
    int32_t input1_multiplier, input1_shift;
    int32_t input2_multiplier, input2_shift;
    int32_t output_multiplier, output_shift;
    int32_t act_min, act_max;
} ep_add_params;

typedef struct {
    int32_t input_multiplier, input_left_shift, diff_min;
} ep_softmax_params;

/* Scratch sizes, in 32-bit words: the one definition of each. The exporter reads these lines
 * (edgeprune/mcu/kernel_sizes.py evaluates a body with the arguments it allocates for) and every
 * kernel that takes scratch is given its size and checks it against the same macro, returning
 * EP_ERROR_DIMS when it is too small. Keep each on one line: integer arguments, + - * / and parentheses. */
#define EP_DENSE_PADDED(k_h, k_w, in_c) (((k_h) * (k_w) * (in_c) + 3) / 4 * 4)
#define EP_CHANNEL_WORDS 5
#define EP_DENSE_SCRATCH_WORDS(k_h, k_w, in_c, out_c) (3 * EP_DENSE_PADDED(k_h, k_w, in_c) + EP_CHANNEL_WORDS * (out_c))
#define EP_PATCH_WORDS(k_h, k_w, in_c) ((k_h) * (k_w) * (in_c))
#define EP_SPARSE_SCRATCH_WORDS(k_h, k_w, in_c, out_c) (EP_PATCH_WORDS(k_h, k_w, in_c) + EP_CHANNEL_WORDS * (out_c))
#define EP_ADD_TABLE_WORDS 512
#define EP_DW_SCRATCH_WORDS(k_h, k_w) (3 * (k_h) * (k_w))

/* Convolution (ep_conv_dense.c, ep_conv_sparse.c). Dense weights: per output channel its window (ky, kx, ci)
 * zero-padded to EP_DENSE_PADDED bytes; scratch: EP_DENSE_SCRATCH_WORDS words for four pixels' windows and
 * the channels' requantization prepared once per layer (EP_CHANNEL_WORDS words a channel). */
int ep_conv_dense(const ep_conv_dims *d, const int8_t *in, const int8_t *w, const int32_t *bias,
                  const ep_requant *q, uint32_t *scratch, int32_t scratch_words, int8_t *out);
/* patch: EP_SPARSE_SCRATCH_WORDS words of scratch: EP_PATCH_WORDS for the four input windows of a group of
 * pixels, then the prepared channels */
int ep_conv_sparse(const ep_conv_dims *d, const int8_t *in, const ep_sparse *w, const int32_t *bias,
                   const ep_requant *q, uint32_t *patch, int32_t patch_words, int8_t *out);
/* the same with look-up-table values (w->table set) */
int ep_conv_sparse_lut(const ep_conv_dims *d, const int8_t *in, const ep_sparse *w, const int32_t *bias,
                       const ep_requant *q, uint32_t *patch, int32_t patch_words, int8_t *out);

/* Depthwise convolution (ep_depthwise.c). Dense weights [ky][kx][out_c]; scratch: EP_DW_SCRATCH_WORDS words (the
 * filter's taps split for the depth multiplier 1 path). */
int ep_depthwise_dense(const ep_conv_dims *d, const int8_t *in, const int8_t *w, const int32_t *bias,
                       const ep_requant *q, uint32_t *scratch, int32_t scratch_words, int8_t *out);
int ep_depthwise_sparse(const ep_conv_dims *d, const int8_t *in, const ep_sparse_dw *w, const int32_t *bias,
                        const ep_requant *q, int8_t *out);

/* Fully connected (ep_fc.c). */
/* The dense layer's weights: the first 4 * (out_n / 4) rows in blocks of four rows, each block per four inputs
 * the four rows' four weights (row 0's first), then each row's in_n % 4 last weights; the out_n % 4 rows left
 * after them one after the other. */
int ep_fc_dense(int32_t in_n, int32_t out_n, const int8_t *in, const int8_t *w, const int32_t *bias,
                const ep_requant *q, int8_t *out);
int ep_fc_sparse(int32_t in_n, int32_t out_n, const int8_t *in, const ep_sparse *w, const int32_t *bias,
                 const ep_requant *q, int8_t *out);
int ep_fc_sparse_lut(int32_t in_n, int32_t out_n, const int8_t *in, const ep_sparse *w, const int32_t *bias,
                     const ep_requant *q, int8_t *out);

/* Add (ep_add.c). tables: EP_ADD_TABLE_WORDS words of scratch; out may be a or b (each element is read before
 * it is written). */
int ep_add(int32_t n, const int8_t *a, const int8_t *b, const ep_add_params *p, uint32_t *tables,
           int32_t table_words, int8_t *out);

/* Pooling (ep_pool.c), pad (ep_pad.c), softmax (ep_softmax.c). */
int ep_max_pool(const ep_pool_dims *d, const int8_t *in, int8_t *out);
int ep_avg_pool(const ep_pool_dims *d, const int8_t *in, int8_t *out);
int ep_pad(const ep_pad_dims *d, const int8_t *in, int8_t value, int8_t *out);
int ep_softmax(int32_t rows, int32_t depth, const int8_t *in, const ep_softmax_params *p, int8_t *out);

/* Element moves and activations (ep_misc.c). */
int ep_transpose(const int32_t in_shape[4], const int32_t perm[4], const int8_t *in, int8_t *out);
int ep_relu(int32_t n, const int8_t *in, int32_t input_zero_point, int32_t output_zero_point,
            int32_t multiplier, int32_t shift, int32_t act_min, int32_t act_max, int8_t *out);
int ep_clamp(int32_t n, const int8_t *in, int32_t lo, int32_t hi, int8_t *out);

/* The graph's float ends (ep_quantize.c): float32 -> int8 with TFLite's AffineQuantize, int8 -> float32 with its
 * Dequantize; n elements. */
int ep_quantize(int32_t n, const float *in, float scale, int32_t zero_point, int8_t *out);
int ep_dequantize(int32_t n, const int8_t *in, float scale, int32_t zero_point, float *out);

#ifdef __cplusplus
}
#endif

#endif
