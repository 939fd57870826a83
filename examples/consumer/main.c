/* A user's firmware that links the nfedge model library (an `nfedge export` folder) — not nfedge's own harness.
 *
 * Written in the common subset of C and C++: main.cpp compiles this same file as C++ (CMake option
 * CONSUMER_CXX), which proves that nfedge_model.h's extern "C" guard lets a C++ application call the C library.
 *
 * What it does, all of it printed as text lines on the board's UART (uart.c):
 *   1. deliberate misuses of the API, each printed as "status <what> <code>" (codes: nfedge_model.h);
 *   2. nfedge_init with this firmware's own arena and workspace (static arrays below, sized by the header's
 *      NFEDGE_ARENA_BYTES / NFEDGE_WORKSPACE_BYTES), then nfedge_check_image on the weight image;
 *   3. for every sample of the input block: "sample <i> base <K logits>" (nfedge_run_base: the classifier on x)
 *      and, with a generator, "sample <i> front_crc <crc32 of F(x)>" (nfedge_run_front) and
 *      "sample <i> run <K logits>" (nfedge_run: the classifier on F(x)); logits as decimal integers;
 *   4. "consumer: exit <status>", then a system reset request (QEMU -no-reboot exits).
 *
 * The weight image is `nfedge_image` (the library reserves it, NFEDGE_RESERVE_IMAGE=ON): an uninitialised array
 * in section .nfedge_image, which the linker script places in the undervolted SRAM bank (REGION_ALIAS
 * NFEDGE_IMAGE_REGION). On a device the boot code fills it from flash (weights/weights.bin); under QEMU the
 * loader puts it there: -device loader,file=weights.bin,addr=<address of nfedge_image>.
 *
 * Input block (this firmware's own format), at the symbol `consumer_input` (section .consumer_input, placed by
 * the linker script; QEMU: -device loader,file=input.bin,addr=<address of consumer_input>), little endian:
 *   offset  0  uint32 magic 0x504E4943 (the bytes "CINP")
 *   offset  4  uint32 count: number of samples
 *   offset  8  uint32 sample_bytes: NFEDGE_INPUT_ELEMS * sizeof(nfedge_input_t) (int8 in integer mode)
 *   offset 12  uint32 0
 *   offset 16  count samples back to back, each [C][H][W], as nfedge_quantize_input makes them
 */
#include <stdint.h>
#include <string.h>

#include "nfedge_model.h"
#include "uart.h"

#define CONSUMER_INPUT_MAGIC 0x504E4943u
#define CONSUMER_INPUT_HEADER 16u
#define SAMPLE_BYTES (NFEDGE_INPUT_ELEMS * sizeof(nfedge_input_t))

#ifndef CONSUMER_CPU_NAME
#define CONSUMER_CPU_NAME "?"
#endif
#ifndef CONSUMER_FLOAT_ABI_NAME
#define CONSUMER_FLOAT_ABI_NAME "?"
#endif
#ifdef __cplusplus
#define CONSUMER_LANG "c++"
#else
#define CONSUMER_LANG "c"
#endif

/* the input block (linker script: .consumer_input) */
extern const uint8_t consumer_input[];
extern const uint8_t consumer_input_end[];

/* This firmware's own buffers for the model: the arena (activations) and the operators' workspace. Each
 * 16 bytes longer than the model needs, so that the misaligned-buffer misuse below stays inside the array. */
static uint8_t arena[NFEDGE_ARENA_BYTES + NFEDGE_BUFFER_ALIGN] __attribute__((aligned(NFEDGE_BUFFER_ALIGN)));
static uint8_t workspace[NFEDGE_WORKSPACE_BYTES + NFEDGE_BUFFER_ALIGN] __attribute__((aligned(NFEDGE_BUFFER_ALIGN)));

static nfedge_input_t x[NFEDGE_INPUT_ELEMS] __attribute__((aligned(NFEDGE_BUFFER_ALIGN)));
#if NFEDGE_HAS_GENERATOR
static nfedge_input_t fx[NFEDGE_INPUT_ELEMS] __attribute__((aligned(NFEDGE_BUFFER_ALIGN)));
#endif
static nfedge_logit_t logits[NFEDGE_NUM_CLASSES];

static void print_status(const char *what, int status) {
  uart_puts("status ");
  uart_puts(what);
  uart_putc(' ');
  uart_put_int(status);
  uart_putc('\n');
}

static void print_logits(uint32_t index, const char *what, const nfedge_logit_t *v) {
  uart_puts("sample ");
  uart_put_int((int32_t)index);
  uart_putc(' ');
  uart_puts(what);
  for (int k = 0; k < NFEDGE_NUM_CLASSES; ++k) {
    uart_putc(' ');
#if NFEDGE_INTEGER
    uart_put_int(v[k]);
#else
    uart_put_int((int32_t)(v[k] * 65536.0f)); /* weight-only builds: float logits in 16.16 fixed point */
#endif
  }
  uart_putc('\n');
}

static uint32_t read_u32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* the misuses a test can check; none of them may crash or touch memory outside the buffers given */
static void misuses(void) {
  print_status("before_init", nfedge_run_base(x, nfedge_image, NFEDGE_IMAGE_BYTES, logits));
  print_status("arena_small", nfedge_init(arena, NFEDGE_ARENA_BYTES - 1, workspace, NFEDGE_WORKSPACE_BYTES));
  print_status("workspace_small", nfedge_init(arena, NFEDGE_ARENA_BYTES, workspace, NFEDGE_WORKSPACE_BYTES - 1));
  print_status("arena_misaligned", nfedge_init(arena + 4, NFEDGE_ARENA_BYTES, workspace, NFEDGE_WORKSPACE_BYTES));
  print_status("workspace_misaligned", nfedge_init(arena, NFEDGE_ARENA_BYTES, workspace + 1, NFEDGE_WORKSPACE_BYTES));
  print_status("arena_null", nfedge_init(NULL, NFEDGE_ARENA_BYTES, workspace, NFEDGE_WORKSPACE_BYTES));
}

static void misuses_after_init(void) {
  print_status("input_null", nfedge_run_base(NULL, nfedge_image, NFEDGE_IMAGE_BYTES, logits));
  print_status("logits_null", nfedge_run_base(x, nfedge_image, NFEDGE_IMAGE_BYTES, NULL));
  print_status("image_null", nfedge_run_base(x, NULL, NFEDGE_IMAGE_BYTES, logits));
  print_status("image_size", nfedge_run_base(x, nfedge_image, NFEDGE_IMAGE_BYTES - 1, logits));
  print_status("run_image_size", nfedge_run(x, nfedge_image, NFEDGE_IMAGE_BYTES + 1, logits));
  print_status("check_image_size", nfedge_check_image(nfedge_image, NFEDGE_IMAGE_BYTES - 1));
  /* one flipped bit in the image, restored at once: the CRC must see it */
  nfedge_image[NFEDGE_IMAGE_BYTES / 2] ^= 0x10;
  int flipped = nfedge_check_image(nfedge_image, NFEDGE_IMAGE_BYTES);
  nfedge_image[NFEDGE_IMAGE_BYTES / 2] ^= 0x10;
  print_status("check_flipped", flipped);
#if !NFEDGE_HAS_GENERATOR
  print_status("front_no_generator", nfedge_run_front(x, x));
#endif
}

/* nfedge_quantize_input on a few fixed values, printed as integers */
static void quantize_probe(void) {
  static const float probe[6] = {0.0f, 1.0f, -1.0f, 0.5f, -0.25f, 0.01f};
  nfedge_input_t q[6];
  int st = nfedge_quantize_input(probe, q, 6);
  uart_puts("quantize ");
  uart_put_int(st);
  for (int i = 0; i < 6; ++i) {
    uart_putc(' ');
    uart_put_int((int32_t)q[i]);
  }
  uart_putc('\n');
}

int main(void) {
  uart_puts("consumer: cpu=" CONSUMER_CPU_NAME " float-abi=" CONSUMER_FLOAT_ABI_NAME " lang=" CONSUMER_LANG "\n");
  uart_puts("model: classes ");
  uart_put_int(NFEDGE_NUM_CLASSES);
  uart_puts(" generator ");
  uart_put_int(NFEDGE_HAS_GENERATOR);
  uart_puts(" integer ");
  uart_put_int(NFEDGE_INTEGER);
  uart_puts(" image_bytes ");
  uart_put_int((int32_t)NFEDGE_IMAGE_BYTES);
  uart_puts(" image_crc32 ");
  uart_put_hex((uint32_t)NFEDGE_IMAGE_CRC32);
  uart_puts(" arena_bytes ");
  uart_put_int((int32_t)NFEDGE_ARENA_BYTES);
  uart_puts(" workspace_bytes ");
  uart_put_int((int32_t)NFEDGE_WORKSPACE_BYTES);
  uart_putc('\n');

  misuses();
  int st = nfedge_init(arena, NFEDGE_ARENA_BYTES, workspace, NFEDGE_WORKSPACE_BYTES);
  print_status("init", st);
  if (st != NFEDGE_OK) return 1;
  /* 0 for the clean image; NFEDGE_ERR_IMAGE_CRC once the undervolted SRAM has flipped bits: the model still
   * runs on it (that is what the generator is for), the application decides what to do */
  print_status("check_image", nfedge_check_image(nfedge_image, NFEDGE_IMAGE_BYTES));
  misuses_after_init();
  quantize_probe();

  if (read_u32(consumer_input) != CONSUMER_INPUT_MAGIC || read_u32(consumer_input + 8) != SAMPLE_BYTES) {
    uart_puts("consumer: no input block at consumer_input (magic or sample size wrong)\n");
    return 2;
  }
  uint32_t count = read_u32(consumer_input + 4);
  if (count > (uint32_t)(consumer_input_end - consumer_input - CONSUMER_INPUT_HEADER) / SAMPLE_BYTES) {
    uart_puts("consumer: the input block holds more samples than its section\n");
    return 2;
  }
  for (uint32_t i = 0; i < count; ++i) {
    memcpy(x, consumer_input + CONSUMER_INPUT_HEADER + i * SAMPLE_BYTES, SAMPLE_BYTES);
    st = nfedge_run_base(x, nfedge_image, NFEDGE_IMAGE_BYTES, logits);
    if (st != NFEDGE_OK) {
      print_status("run_base_failed", st);
      return 3;
    }
    print_logits(i, "base", logits);
#if NFEDGE_HAS_GENERATOR
    st = nfedge_run_front(x, fx);
    if (st != NFEDGE_OK) {
      print_status("run_front_failed", st);
      return 3;
    }
    uart_puts("sample ");
    uart_put_int((int32_t)i);
    uart_puts(" front_crc ");
    uart_put_hex(nfedge_crc32(fx, sizeof(fx)));
    uart_putc('\n');
    st = nfedge_run(x, nfedge_image, NFEDGE_IMAGE_BYTES, logits);
    if (st != NFEDGE_OK) {
      print_status("run_failed", st);
      return 3;
    }
    print_logits(i, "run", logits);
#endif
  }
  uart_puts("samples ");
  uart_put_int((int32_t)count);
  uart_putc('\n');

#if CONSUMER_BUILTIN_BUFFERS
  /* the library's own static buffers (NFEDGE_STATIC_BUFFERS=ON; linker sections .nfedge_arena/.nfedge_workspace) */
  print_status("init_builtin", nfedge_init(NULL, 0, NULL, 0));
  if (count > 0) {
    memcpy(x, consumer_input + CONSUMER_INPUT_HEADER, SAMPLE_BYTES);
    print_status("run_base_builtin", nfedge_run_base(x, nfedge_image, NFEDGE_IMAGE_BYTES, logits));
    print_logits(0, "builtin", logits);
  }
#endif
  return 0;
}
