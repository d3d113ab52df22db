/* Startup code for Cortex-M boards: QEMU's mps2-an386, mps2-an500, mps3-an547 (cortex_m.ld) and the
 * micro:bit's nRF51 Cortex-M0 (microbit.ld), or any board with code at 0x0 and RAM at 0x20000000.
 *
 * The vector table holds the initial stack pointer and the reset handler; every other
 * exception goes to ep_fault_handler unless the program defines a handler of the same name
 * (SysTick_Handler, say). The reset handler copies .data from flash, zeroes .bss, enables the
 * FPU on builds that use one, runs the C/C++ constructors and calls exit(main()).
 *
 * Two builds, chosen by the macro EP_SEMIHOSTING:
 * - -DEP_SEMIHOSTING, linked with --specs=rdimon.specs -nostartfiles (QEMU, or a board with a debugger
 *   attached): the reset handler opens newlib's semihosting streams, so that stdio reaches the host's
 *   console and files, and exit's status reaches QEMU's exit code; a fault prints one line on the host
 *   and stops QEMU with a failure status.
 * - without it, linked with --specs=nano.specs --specs=nosys.specs -nostartfiles (a board on its own):
 *   nothing here executes a semihosting call (BKPT 0xAB, which faults when no debugger answers). A
 *   fault stores the exception number in ep_fault_exception and waits in a loop for a debugger or a
 *   watchdog; exit ends in newlib's _exit, a loop; printf reaches whatever _write the firmware defines.
 */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t __data_load__[], __data_start__[], __data_end__[];
extern uint32_t __bss_start__[], __bss_end__[];
extern uint32_t __stack_top__[];

extern int main(void);
extern void __libc_init_array(void);

void ep_reset_handler(void);
void ep_fault_handler(void);

/* The exception number (IPSR) of the last fault or unexpected interrupt; 0 while none was taken. */
volatile uint32_t ep_fault_exception;

static uint32_t exception_number(void) {
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    return ipsr & 0x1FFu;
}

#ifdef EP_SEMIHOSTING
extern void initialise_monitor_handles(void);

/* Semihosting calls (Arm "Semihosting for AArch32 and AArch64"): BKPT 0xAB, operation in r0,
 * argument in r1. Only the fault handler uses them directly; the rest goes through newlib. */
#define SEMIHOSTING_SYS_WRITE0 0x04
#define SEMIHOSTING_SYS_EXIT 0x18
#define ADP_STOPPED_RUN_TIME_ERROR 0x20023

static void semihosting_call(uint32_t operation, uintptr_t argument) {
    register uint32_t r0 __asm__("r0") = operation;
    register uintptr_t r1 __asm__("r1") = argument;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
}
#endif

/* A fault or an unexpected interrupt. With semihosting: say so on the host's console and stop QEMU
 * with a failure status, instead of hanging in a loop until the host's timeout. Without: record
 * which exception it was and stay here (a debugger finds the PC in this loop; a watchdog resets). */
void ep_fault_handler(void) {
    ep_fault_exception = exception_number();
#ifdef EP_SEMIHOSTING
    semihosting_call(SEMIHOSTING_SYS_WRITE0, (uintptr_t)"EP fault: the program took an unexpected exception\n");
    semihosting_call(SEMIHOSTING_SYS_EXIT, ADP_STOPPED_RUN_TIME_ERROR);
#endif
    for (;;) {
    }
}

void NMI_Handler(void) __attribute__((weak, alias("ep_fault_handler")));
void HardFault_Handler(void) __attribute__((weak, alias("ep_fault_handler")));
void MemManage_Handler(void) __attribute__((weak, alias("ep_fault_handler")));
void BusFault_Handler(void) __attribute__((weak, alias("ep_fault_handler")));
void UsageFault_Handler(void) __attribute__((weak, alias("ep_fault_handler")));
void SVC_Handler(void) __attribute__((weak, alias("ep_fault_handler")));
void PendSV_Handler(void) __attribute__((weak, alias("ep_fault_handler")));
void SysTick_Handler(void) __attribute__((weak, alias("ep_fault_handler")));

/* 16 system exceptions and 32 device interrupts, all unused by the harness. */
#define EP_VECTORS 48

__attribute__((section(".isr_vector"), used)) static void (*const vector_table[EP_VECTORS])(void) = {
    (void (*)(void))__stack_top__,
    ep_reset_handler,
    NMI_Handler,
    HardFault_Handler,
    MemManage_Handler,
    BusFault_Handler,
    UsageFault_Handler,
    0, 0, 0, 0, /* reserved (SecureFault on v8-M is left to the fault handler below) */
    SVC_Handler,
    0, 0, /* debug monitor, reserved */
    PendSV_Handler,
    SysTick_Handler,
    [16 ... EP_VECTORS - 1] = ep_fault_handler,
};

/* Coprocessor Access Control Register: full access to CP10 and CP11 (the FPU, and MVE on v8.1-M). */
#define CPACR (*(volatile uint32_t *)0xE000ED88u)

void ep_reset_handler(void) {
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
    CPACR |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    for (uint32_t *src = __data_load__, *dst = __data_start__; dst < __data_end__;)
        *dst++ = *src++;
    for (uint32_t *dst = __bss_start__; dst < __bss_end__;)
        *dst++ = 0;
#ifdef EP_SEMIHOSTING
    initialise_monitor_handles();
#endif
    __libc_init_array();
    exit(main());
}

/* -nostartfiles drops crti.o/crtn.o, whose _init and _fini __libc_init_array and exit call. */
void _init(void) {}
void _fini(void) {}
