/* The consumer firmware's own startup for Armv7E-M / Armv8.1-M (Cortex-M4, Cortex-M55): vector table, reset
 * handler, fault handler and the exit path. It shares nothing with nfedge's firmware_harness.
 *
 * Reset_Handler copies .data from its load address (flash) to RAM, zeroes .bss, enables the FPU (and MVE on
 * the M55), runs the C++ constructors (.init_array), then calls main(). main's return value is printed and
 * the core requests a system reset (SCB AIRCR.SYSRESETREQ), which QEMU run with -no-reboot turns into its exit.
 * A HardFault (or an unexpected interrupt) prints one "consumer: HARDFAULT ..." line with the faulting PC and
 * the fault status registers, and stops the same way.
 *
 * The symbols come from linker/cortex-m55.ld and linker/cortex-m4.ld.
 */
#include <stdint.h>

#include "uart.h"

extern uint32_t __data_load__, __data_start__, __data_end__, __bss_start__, __bss_end__, __stack_top__;
extern void (*__init_array_start__[])(void);
extern void (*__init_array_end__[])(void);
extern int main(void);

void Reset_Handler(void);
void HardFault_Handler(void);
void Default_Handler(void);
void consumer_exit(int status) __attribute__((noreturn));

#define SCB_ICSR (*(volatile uint32_t *)0xE000ED04u)
#define SCB_VTOR (*(volatile uint32_t *)0xE000ED08u)
#define SCB_AIRCR (*(volatile uint32_t *)0xE000ED0Cu)
#define SCB_CFSR (*(volatile uint32_t *)0xE000ED28u)
#define SCB_HFSR (*(volatile uint32_t *)0xE000ED2Cu)
#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)

/* 16 system exceptions + 16 external interrupts (none is enabled) */
__attribute__((section(".vectors"), used)) void (*const consumer_vectors[32])(void) = {
    (void (*)(void))(&__stack_top__),
    Reset_Handler,
    Default_Handler,   /* NMI */
    HardFault_Handler, /* HardFault */
    HardFault_Handler, /* MemManage (escalates to HardFault unless enabled) */
    HardFault_Handler, /* BusFault */
    HardFault_Handler, /* UsageFault */
    HardFault_Handler, /* SecureFault (Armv8-M) */
    0, 0, 0,
    Default_Handler, /* SVCall */
    Default_Handler, /* DebugMonitor */
    0,
    Default_Handler, /* PendSV */
    Default_Handler, /* SysTick */
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler,
};

__attribute__((noreturn)) void Reset_Handler(void) {
  uint32_t *src = &__data_load__, *dst = &__data_start__;
  if (src != dst)
    while (dst < &__data_end__) *dst++ = *src++;
  for (dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
  SCB_VTOR = (uint32_t)(uintptr_t)consumer_vectors;
  SCB_CPACR |= 0xFu << 20; /* CP10 + CP11: the FPU (and MVE on Armv8.1-M) */
  __asm volatile("dsb\n isb" ::: "memory");
  uart_init();
  for (void (**f)(void) = __init_array_start__; f < __init_array_end__; ++f) (*f)();
  consumer_exit(main());
}

void consumer_exit(int status) {
  uart_puts("consumer: exit ");
  uart_put_int(status);
  uart_putc('\n');
  __asm volatile("dsb" ::: "memory");
  SCB_AIRCR = 0x05FA0004u; /* VECTKEY | SYSRESETREQ: QEMU -no-reboot exits here */
  __asm volatile("dsb" ::: "memory");
  for (;;) __asm volatile("wfi");
}

/* called by HardFault_Handler with the exception stack frame: r0-r3, r12, lr, pc, xpsr */
__attribute__((noreturn, used)) void consumer_fault(const uint32_t *frame) {
  uart_init(); /* the fault may come before Reset_Handler set it up */
  uart_puts("\nconsumer: HARDFAULT pc=");
  uart_put_hex(frame[6]);
  uart_puts(" lr=");
  uart_put_hex(frame[5]);
  uart_puts(" cfsr=");
  uart_put_hex(SCB_CFSR);
  uart_puts(" hfsr=");
  uart_put_hex(SCB_HFSR);
  uart_putc('\n');
  consumer_exit(250);
}

/* EXC_RETURN bit 2 says which stack holds the frame (0: MSP, 1: PSP) */
__attribute__((naked)) void HardFault_Handler(void) {
  __asm volatile(
      "tst lr, #4\n"
      "ite eq\n"
      "mrseq r0, msp\n"
      "mrsne r0, psp\n"
      "b consumer_fault\n");
}

__attribute__((noreturn)) void Default_Handler(void) {
  uart_init();
  uart_puts("\nconsumer: unexpected interrupt ");
  uart_put_int((int32_t)(SCB_ICSR & 0x1FFu));
  uart_putc('\n');
  consumer_exit(251);
}
