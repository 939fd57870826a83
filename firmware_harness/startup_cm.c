/* Cortex-M startup for nfedge firmware (bare metal, newlib + rdimon semihosting, no CMSIS).
 *
 * Reset_Handler copies .data (and the .got that LLVM objects from TVM reference; the linker script
 * keeps it inside .data) from its load address, zeroes .bss, turns on the FPU, initialises newlib's
 * semihosting file handles and calls main(); main's return value becomes the emulator's exit code.
 * A fault prints one line through semihosting and exits with NFEDGE_EXIT_FAULT so the host harness
 * can tell a crash from a hang (timeout) or a clean non-zero exit.
 */
#include <stdint.h>
#include <stdlib.h>

#include "nfedge_rt.h"

extern uint32_t __data_load__, __data_start__, __data_end__, __bss_start__, __bss_end__, __stack_top__;
extern int main(void);
extern void initialise_monitor_handles(void);

void Reset_Handler(void);
void Fault_Handler(void);
void Default_Handler(void);
void SysTick_Handler(void);

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SCB_VTOR (*(volatile uint32_t *)0xE000ED08u)

__attribute__((section(".isr_vector"), used)) void (*const nfedge_vectors[16 + 32])(void) = {
    (void (*)(void))(&__stack_top__),
    Reset_Handler,
    Default_Handler, /* NMI */
    Fault_Handler,   /* HardFault */
    Fault_Handler,   /* MemManage */
    Fault_Handler,   /* BusFault */
    Fault_Handler,   /* UsageFault */
    Fault_Handler,   /* SecureFault (v8-M) */
    0, 0, 0,
    Default_Handler, /* SVC */
    Default_Handler, /* DebugMon */
    0,
    Default_Handler, /* PendSV */
    SysTick_Handler,
    /* external interrupts: none are enabled; unexpected ones land in Default_Handler */
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler,
};

__attribute__((noreturn)) void Reset_Handler(void) {
  uint32_t *src = &__data_load__, *dst = &__data_start__;
  if (src != dst)
    while (dst < &__data_end__) *dst++ = *src++;
  for (dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
  SCB_VTOR = (uint32_t)nfedge_vectors;
  SCB_CPACR |= (0xFu << 20); /* CP10 + CP11 full access: FPU (and MVE on v8.1-M) */
  __asm volatile("dsb\n isb" ::: "memory");
  initialise_monitor_handles();
  exit(main());
}

/* -nostartfiles drops crti/crtn; newlib's exit() still calls these. */
void _init(void) {}
void _fini(void) {}

/* Semihosting straight from a fault handler (newlib's state may be what faulted). */
static int nfedge_semihost(int op, void *arg) {
  register int r0 __asm__("r0") = op;
  register void *r1 __asm__("r1") = arg;
  __asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

__attribute__((noreturn)) void Fault_Handler(void) {
  nfedge_semihost(0x04 /* SYS_WRITE0 */, "nfedge: CPU fault (HardFault/MemManage/BusFault/UsageFault)\n");
  uint32_t block[2] = {0x20026u /* ADP_Stopped_ApplicationExit */, NFEDGE_EXIT_FAULT};
  for (;;) nfedge_semihost(0x18 /* SYS_EXIT */, block);
}

__attribute__((noreturn)) void Default_Handler(void) {
  nfedge_semihost(0x04, "nfedge: unexpected interrupt\n");
  uint32_t block[2] = {0x20026u, NFEDGE_EXIT_FAULT};
  for (;;) nfedge_semihost(0x18, block);
}

/* SysTick: a 24-bit down counter at the CPU clock; count wraps to get 64-bit tick totals. */
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
static volatile uint32_t nfedge_systick_wraps;

void SysTick_Handler(void) { nfedge_systick_wraps++; }

void nfedge_timer_init(void) {
  SYST_RVR = 0xFFFFFFu;
  SYST_CVR = 0;
  SYST_CSR = 0x7u; /* CLKSOURCE = processor clock, TICKINT, ENABLE */
  while (SYST_CVR == 0) {
  } /* the first tick reloads the counter; before it, CVR reads 0 (would look like a full period) */
  nfedge_systick_wraps = 0;
}

#define SCB_ICSR (*(volatile uint32_t *)0xE000ED04u)

uint64_t nfedge_timer_ticks(void) {
  __asm volatile("cpsid i" ::: "memory");
  uint32_t w = nfedge_systick_wraps, v = SYST_CVR;
  if (SCB_ICSR & (1u << 26)) { /* PENDSTSET: a wrap happened that the handler has not counted yet */
    v = SYST_CVR;
    w++;
  }
  __asm volatile("cpsie i" ::: "memory");
  return (uint64_t)w * 0x1000000u + (0xFFFFFFu - v);
}
