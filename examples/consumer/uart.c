/* CMSDK APB UART, polled transmit (see uart.h). */
#include "uart.h"

#ifndef CONSUMER_UART_ADDR
#error "CONSUMER_UART_ADDR: the board's UART0 base address (CMakeLists.txt sets it per CPU)"
#endif

#define UART_DATA (*(volatile uint32_t *)(CONSUMER_UART_ADDR + 0x000u))
#define UART_STATE (*(volatile uint32_t *)(CONSUMER_UART_ADDR + 0x004u)) /* bit 0: TX buffer full */
#define UART_CTRL (*(volatile uint32_t *)(CONSUMER_UART_ADDR + 0x008u))  /* bit 0: TX enable */
#define UART_BAUDDIV (*(volatile uint32_t *)(CONSUMER_UART_ADDR + 0x010u))

void uart_init(void) {
  UART_BAUDDIV = 16; /* the smallest divider the UART accepts; QEMU sends at once whatever the rate */
  UART_CTRL = 1u;
}

void uart_putc(char c) {
  while (UART_STATE & 1u) {
  }
  UART_DATA = (uint8_t)c;
}

void uart_puts(const char *s) {
  while (*s) uart_putc(*s++);
}

void uart_put_int(int32_t v) {
  char buf[12];
  int n = 0;
  uint32_t u = v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
  do {
    buf[n++] = (char)('0' + u % 10u);
    u /= 10u;
  } while (u);
  if (v < 0) uart_putc('-');
  while (n) uart_putc(buf[--n]);
}

void uart_put_hex(uint32_t v) {
  uart_puts("0x");
  for (int s = 28; s >= 0; s -= 4) uart_putc("0123456789abcdef"[(v >> s) & 0xFu]);
}
