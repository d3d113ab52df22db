/* Private helpers of the sparse kernels (ep_conv_sparse.c, ep_fc.c): walking a run of gap entries and reading
 * its values (the ep_sparse format in ep_kernels.h). The statement macros take everything they use as
 * arguments; each expands to one statement. */
#ifndef EP_SPARSE_RUNS_H
#define EP_SPARSE_RUNS_H

#include "ep_kernels.h"

/* Walk one run of `n` entries from `nib`, running ENTRY(g, escape, ...) for each with the extra arguments;
 * `bits` is 4 (escape 15) or 8 (no escape: the compiler drops the test against 256). `nib` ends on the next
 * run's first byte and `n` at 0. */
#define EP_WALK_RUN(nib, n, bits, ENTRY, ...)               \
    do {                                                    \
        if ((bits) == 4) {                                  \
            for (; (n) >= 2; (n) -= 2) {                    \
                const uint32_t ep_pair = *(nib)++;          \
                ENTRY(ep_pair & 15u, 15u, __VA_ARGS__);     \
                ENTRY(ep_pair >> 4, 15u, __VA_ARGS__);      \
            }                                               \
            if (n) {                                        \
                const uint32_t ep_last = *(nib)++ & 15u;    \
                ENTRY(ep_last, 15u, __VA_ARGS__);           \
            }                                               \
        } else { /* to an end pointer: one compare a step */ \
            const uint8_t *const ep_end = (nib) + (n);      \
            while ((nib) != ep_end) {                       \
                const uint32_t ep_entry = *(nib)++;         \
                ENTRY(ep_entry, 256u, __VA_ARGS__);         \
            }                                               \
            (n) = 0;                                        \
        }                                                   \
    } while (0)

/* The number of entries of run `o`: uint8 or uint16 counts. */
#define EP_RUN_LENGTH(w, o) ((w)->count8 ? (uint32_t)(w)->count8[o] : (uint32_t)(w)->count[o])

/* No look-up table: a constant, so that the compiler drops the codes' path. */
#define EP_NO_TABLE ((const int8_t *)0)

/* Set `wv` to the next value of a run: int8 from `v`, or with a look-up table (`table` not EP_NO_TABLE) the
 * table's value for the next 4-bit code, a code byte read every second value (`pending` keeps its high
 * nibble, plus 16). */
#define EP_NEXT_VALUE(wv, v, table, pending)                    \
    do {                                                        \
        if ((table) == EP_NO_TABLE) {                           \
            (wv) = *(v)++;                                      \
        } else if (pending) {                                   \
            (wv) = (table)[(pending) & 15u];                    \
            (pending) = 0;                                      \
        } else {                                                \
            const uint32_t ep_byte = *(const uint8_t *)(v)++;   \
            (wv) = (table)[ep_byte & 15u];                      \
            (pending) = (ep_byte >> 4) | 16u;                   \
        }                                                       \
    } while (0)

#endif
