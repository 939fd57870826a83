/* A polled transmit-only driver for the CMSDK APB UART of the Arm MPS2/MPS3 boards (and QEMU's model of it,
 * hw/char/cmsdk-apb-uart.c). CONSUMER_UART_ADDR comes from CMakeLists.txt: 0x59303000 (UART0, Secure alias)
 * on the Cortex-M55 AN547, 0x40004000 (UART0) on the Cortex-M4 AN386. QEMU routes UART0 to -serial / stdout. */
#ifndef CONSUMER_UART_H_
#define CONSUMER_UART_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void uart_init(void);
void uart_putc(char c);
void uart_puts(const char *s);
void uart_put_int(int32_t v);    /* decimal, '-' for negatives */
void uart_put_hex(uint32_t v);   /* 0x%08x */

#ifdef __cplusplus
}
#endif

#endif
