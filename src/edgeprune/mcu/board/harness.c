/* The measuring harness: streams inputs from a host file through edgeprune_invoke.
 *
 * Runs under QEMU with semihosting; files are relative to QEMU's working folder:
 *   inputs.bin   N inputs of EDGEPRUNE_INPUT_SIZE values (EDGEPRUNE_INPUT_TYPE) each, back to back (read);
 *   outputs.bin  N outputs of EDGEPRUNE_OUTPUT_SIZE values (EDGEPRUNE_OUTPUT_TYPE) each (written, flushed per input).
 * Standard output gets one line per fact, each starting with "EP ":
 *   EP layers L
 *   EP image I total T layers T0 T1 ... T(L-1)    (SysTick ticks; a line per image, sent at once)
 *   EP stack B                                     (bytes of stack edgeprune_invoke used at most)
 *   EP done N
 * Exit status 0 once every image ran; non-zero, after an "EP error: ..." line, otherwise.
 *
 * Time: SysTick counts down at the core clock (25 MHz on QEMU's mps2 boards, 32 MHz on
 * mps3-an547). Under QEMU's -icount shift=0 every guest instruction is 1 ns of virtual time, so
 * a tick is 40 (mps2) or 31.25 (an547) instructions executed in emulation, not cycles. The
 * 24-bit counter wraps every 2^24 ticks; the SysTick interrupt counts the wraps.
 * Per layer: the model, compiled with -DEDGEPRUNE_LAYER_DONE=ep_layer_done, calls
 * ep_layer_done(i) after layer i; the ticks since the previous call (or since the start of
 * the inference) are layer i's.
 * Stack: the free stack below main's frame is painted before each inference and scanned
 * after it; the deepest use of all inferences is reported (edgeprune_invoke's own stack plus
 * ep_layer_done's small frame, and an exception frame if a SysTick wrap fell into it).
 */
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include "edgeprune_model.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYST_CSR_ENABLE_TICKINT_CORECLOCK 0x7u
#define SYST_RELOAD 0xFFFFFFu

#define STACK_PAINT 0x5AFEC0DEu
#define STACK_MARGIN 256u /* a deepest write this close to the region's end counts as an overflow */

extern uint32_t __stack_limit__[];

static volatile uint32_t systick_wraps;
static uint32_t layer_ticks[EDGEPRUNE_NUM_LAYERS];
static uint32_t last_tick;
static EDGEPRUNE_INPUT_TYPE input[EDGEPRUNE_INPUT_SIZE] __attribute__((aligned(16)));
static EDGEPRUNE_OUTPUT_TYPE output[EDGEPRUNE_OUTPUT_SIZE] __attribute__((aligned(16)));

void SysTick_Handler(void) { systick_wraps++; }

static void timer_start(void) {
    SYST_RVR = SYST_RELOAD;
    SYST_CVR = 0;
    SYST_CSR = SYST_CSR_ENABLE_TICKINT_CORECLOCK;
    while (SYST_CVR == 0) { /* the counter reads 0 until its first reload */
    }
}

/* Ticks since timer_start, modulo 2^32 (differences are right for spans under 2^32 ticks).
 * A wrap between the two reads of the wrap count retries; QEMU takes the SysTick interrupt at
 * the instruction where the counter reloads, so a reloaded value never pairs with an old count. */
static uint32_t timer_now(void) {
    uint32_t wraps, value;
    do {
        wraps = systick_wraps;
        value = SYST_CVR;
    } while (wraps != systick_wraps);
    return wraps * (SYST_RELOAD + 1u) + (SYST_RELOAD - value);
}

void ep_layer_done(int layer) {
    uint32_t now = timer_now();
    if (layer >= 0 && layer < EDGEPRUNE_NUM_LAYERS)
        layer_ticks[layer] = now - last_tick;
    last_tick = now;
}

static inline uint32_t *stack_pointer(void) {
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

/* Paints the free stack, up to this function's own frame (so the words it saved survive). */
static void paint_stack(void) {
    uint32_t *top = stack_pointer();
    for (uint32_t *p = __stack_limit__; p < top; p++)
        *p = STACK_PAINT;
}

/* Bytes below sp that no longer hold the paint. */
static uint32_t stack_used(uint32_t *sp) {
    uint32_t *p = __stack_limit__;
    while (p < sp && *p == STACK_PAINT)
        p++;
    return (uint32_t)((uintptr_t)sp - (uintptr_t)p);
}

static int fail(const char *message) {
    printf("EP error: %s\n", message);
    return 1;
}

int main(void) {
    FILE *in = fopen("inputs.bin", "rb");
    if (in == NULL)
        return fail("cannot open inputs.bin in QEMU's working folder");
    FILE *out = fopen("outputs.bin", "wb");
    if (out == NULL)
        return fail("cannot create outputs.bin in QEMU's working folder");
    /* Unbuffered: each input is one semihosting read and each output one write, and newlib takes no 1 KB buffer
     * per file from the heap (the micro:bit has 16 KB of RAM). */
    setvbuf(in, NULL, _IONBF, 0);
    setvbuf(out, NULL, _IONBF, 0);
    printf("EP layers %d\n", EDGEPRUNE_NUM_LAYERS);
    timer_start();

    uint32_t *sp = stack_pointer();
    uint32_t stack = 0;
    unsigned long images = 0;
    while (fread(input, 1, sizeof input, in) == sizeof input) {
        for (int i = 0; i < EDGEPRUNE_NUM_LAYERS; i++)
            layer_ticks[i] = 0;
        /* The heap (stdio's buffers, taken at a stream's first use) must end below the stack region: it is painted. */
        if ((uintptr_t)sbrk(0) > (uintptr_t)__stack_limit__)
            return fail("the heap reaches into the stack region (EP_HEAP_SIZE and EP_STACK_SIZE in the linker script)");
        paint_stack();
        uint32_t start = timer_now();
        last_tick = start;
        int status = edgeprune_invoke(input, output);
        uint32_t total = timer_now() - start;
        uint32_t used = stack_used(sp);
        if (used > stack)
            stack = used;
        if (used + STACK_MARGIN > (uint32_t)((uintptr_t)sp - (uintptr_t)__stack_limit__))
            return fail("edgeprune_invoke used all of the stack region (EP_STACK_SIZE in cortex_m.ld)");
        if (status != 0)
            return fail("edgeprune_invoke returned an error");
        if (fwrite(output, 1, sizeof output, out) != sizeof output || fflush(out) != 0)
            return fail("cannot write outputs.bin");
        printf("EP image %lu total %lu layers", images, (unsigned long)total);
        for (int i = 0; i < EDGEPRUNE_NUM_LAYERS; i++)
            printf(" %lu", (unsigned long)layer_ticks[i]);
        printf("\n"); /* the semihosting console is line-buffered: each image's line leaves now */
        images++;
    }
    printf("EP stack %lu\n", (unsigned long)stack);
    printf("EP done %lu\n", images);
    fclose(out);
    fclose(in);
    return 0;
}
