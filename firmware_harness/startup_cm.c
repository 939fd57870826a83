/* Cortex-M startup and target I/O for nfedge firmware (bare metal, no semihosting, no CMSIS).
 *
 * Reset_Handler copies .data (and the .got that LLVM objects from TVM reference; the linker script
 * keeps it inside .data) from its load address, zeroes .bss, turns on the FPU, sets up the UART and
 * calls main(); main's return value is sent as the exit record and the core then requests a system
 * reset, which QEMU (-no-reboot) turns into its exit. A fault sends one message record and exit status
 * NFEDGE_EXIT_FAULT the same way, so the host harness can tell a crash from a hang (timeout) or a clean
 * non-zero exit.
 *
 * Nothing here uses semihosting (BKPT 0xAB): nfedge runs QEMU without it, so the guest has no route to
 * the host's files or commands. A BKPT then raises a debug exception, which escalates to HardFault.
 */
#include <stdint.h>

#include "nfedge_rt.h"

extern uint32_t __data_load__, __data_start__, __data_end__, __bss_start__, __bss_end__, __stack_top__;
extern int main(void);

void Reset_Handler(void);
void Fault_Handler(void);
void Default_Handler(void);
void SysTick_Handler(void);

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SCB_VTOR (*(volatile uint32_t *)0xE000ED08u)
#define SCB_AIRCR (*(volatile uint32_t *)0xE000ED0Cu)
#define AIRCR_SYSRESETREQ (0x05FAu << 16 | 1u << 2) /* VECTKEY + SYSRESETREQ */

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
  nfedge_uart_init();
  nfedge_exit(main());
}

/* ---- CMSDK APB UART (QEMU hw/char/cmsdk-apb-uart.c): polled transmit, no interrupts ---- */
#define UART_DATA (*(volatile uint32_t *)(NFEDGE_UART_ADDR + 0x000u))
#define UART_STATE (*(volatile uint32_t *)(NFEDGE_UART_ADDR + 0x004u)) /* bit 0: TX buffer full */
#define UART_CTRL (*(volatile uint32_t *)(NFEDGE_UART_ADDR + 0x008u))  /* bit 0: TX enable */
#define UART_BAUDDIV (*(volatile uint32_t *)(NFEDGE_UART_ADDR + 0x010u))

void nfedge_uart_init(void) {
  UART_BAUDDIV = 16; /* the smallest divider the UART accepts; QEMU sends at once whatever the rate */
  UART_CTRL = 1u;
}

static void uart_put(const uint8_t *p, uint32_t n, uint32_t *crc) {
  for (uint32_t i = 0; i < n; ++i) {
    while (UART_STATE & 1u) {
    }
    UART_DATA = p[i];
    if (crc) { /* CRC-32, reflected polynomial 0xEDB88320 (zlib.crc32 on the host) */
      uint32_t c = *crc ^ p[i];
      for (int b = 0; b < 8; ++b) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
      *crc = c;
    }
  }
}

void nfedge_record(uint8_t type, const void *a, uint32_t na, const void *b, uint32_t nb, const void *c, uint32_t nc) {
  uint32_t len = na + nb + nc, crc = 0xFFFFFFFFu;
  if (len > 0xFFFFu) len = na = nb = nc = 0; /* cannot be framed: an empty record tells the host */
  const uint8_t sync[2] = {'N', 'F'}, head[3] = {type, (uint8_t)len, (uint8_t)(len >> 8)};
  uart_put(sync, 2, 0);
  uart_put(head, 3, &crc);
  uart_put((const uint8_t *)a, na, &crc);
  uart_put((const uint8_t *)b, nb, &crc);
  uart_put((const uint8_t *)c, nc, &crc);
  crc ^= 0xFFFFFFFFu;
  const uint8_t tail[4] = {(uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16), (uint8_t)(crc >> 24)};
  uart_put(tail, 4, 0);
}

__attribute__((noreturn)) void nfedge_exit(int status) {
  uint32_t s = (uint32_t)status;
  nfedge_record(NFEDGE_REC_EXIT, &s, 4, 0, 0, 0, 0);
  __asm volatile("dsb" ::: "memory");
  SCB_AIRCR = AIRCR_SYSRESETREQ;
  __asm volatile("dsb" ::: "memory");
  for (;;) __asm volatile("wfi"); /* the reset request takes effect at once; never reached in QEMU */
}

static uint32_t cstrlen(const char *s) {
  uint32_t n = 0;
  while (s[n]) ++n;
  return n;
}

static __attribute__((noreturn)) void fatal(const char *what) {
  nfedge_uart_init(); /* the fault may have come before Reset_Handler set it up */
  nfedge_record(NFEDGE_REC_MESSAGE, what, cstrlen(what), 0, 0, 0, 0);
  nfedge_exit(NFEDGE_EXIT_FAULT);
}

__attribute__((noreturn)) void Fault_Handler(void) { fatal("nfedge: CPU fault (HardFault/MemManage/BusFault/UsageFault)"); }

__attribute__((noreturn)) void Default_Handler(void) { fatal("nfedge: unexpected interrupt"); }

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
