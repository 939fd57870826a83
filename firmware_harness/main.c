/* nfedge evaluation main: streams inputs, runs generator + base model, writes logits and timer ticks.
 *
 * Per sample the outputs are base(x) logits [K], then base(F(x)) logits [K] when a generator is built in,
 * and the uint64 ticks of base(x), G (the front F(x) = clip(x + G(x), -1, 1)) and base(F(x)); only the
 * model calls sit between the timer reads, so the I/O below never enters the counts.
 *
 * Cortex-M (NFEDGE_UART_ADDR defined, see nfedge_rt.h): no files and no semihosting. The inputs are a
 * block in guest memory at NFEDGE_INPUT_ADDR (header with the sample count, then the samples), the weight
 * image sits at NFEDGE_IMAGE_ADDR, both placed there by the emulator's loader (one firmware, any image);
 * the outputs and the status go out as framed records on the UART.
 *
 * Linux targets (a static runner, run confined to the run's temp folder): plain stdio files in the
 * working directory: input.bin (samples back to back: float32, or int8 in integer mode; N = file size / sample size), image.bin,
 * logits.bin, ticks.bin; the last stdout line is "nfedge-done samples=N workspace_peak=B" on success.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "nfedge_rt.h"

/* nfedge_input_t / nfedge_logit_t (model.h): float / float in weight-only mode, int8_t / int32_t in integer mode */
#define SAMPLE_ELEMS (NFEDGE_IN_C * NFEDGE_IN_H * NFEDGE_IN_W)
#define SAMPLE_BYTES (SAMPLE_ELEMS * sizeof(nfedge_input_t))

static nfedge_input_t x_buf[SAMPLE_ELEMS] __attribute__((aligned(16)));
#if NFEDGE_HAS_GENERATOR
static nfedge_input_t fx_buf[SAMPLE_ELEMS] __attribute__((aligned(16)));
#endif
static nfedge_logit_t logits[2 * NFEDGE_NUM_CLASSES] __attribute__((aligned(16)));

#ifdef NFEDGE_UART_ADDR /* ------------------------------------------------ bare metal: memory + UART */

static const uint8_t *in_next;
static uint32_t in_left;

static const int8_t *load_image(void) { return (const int8_t *)(uintptr_t)NFEDGE_IMAGE_ADDR; }

static int fail(int code, const char *what) {
  static const char prefix[] = "nfedge-error: ";
  nfedge_record(NFEDGE_REC_MESSAGE, prefix, sizeof(prefix) - 1, what, (uint32_t)strlen(what), 0, 0);
  return code;
}

static const char *io_open(void) {
  const nfedge_input_header *h = (const nfedge_input_header *)(uintptr_t)NFEDGE_INPUT_ADDR;
  if (h->magic != NFEDGE_INPUT_MAGIC || h->version != NFEDGE_INPUT_VERSION)
    return "no input block at the input address (the emulator's loader did not place one)";
  if (h->sample_bytes != SAMPLE_BYTES) return "the input block's sample size does not match the model";
  if (h->count > (NFEDGE_INPUT_BYTES - NFEDGE_INPUT_HEADER) / SAMPLE_BYTES)
    return "the input block holds more samples than its region";
  in_next = (const uint8_t *)h + NFEDGE_INPUT_HEADER;
  in_left = h->count;
  return NULL;
}

/* 1: a sample in x, 0: no more samples, -1: error */
static int io_next(nfedge_input_t *x) {
  if (in_left == 0) return 0;
  memcpy(x, in_next, SAMPLE_BYTES);
  in_next += SAMPLE_BYTES;
  --in_left;
  return 1;
}

static int io_emit(uint32_t index, const nfedge_logit_t *out, size_t k, const uint64_t ticks[3]) {
  nfedge_record(NFEDGE_REC_SAMPLE, &index, 4, out, (uint32_t)(k * sizeof(nfedge_logit_t)), ticks, 3 * sizeof(uint64_t));
  return 0;
}

static int io_close(uint32_t n) {
  uint32_t done[2] = {n, (uint32_t)nfedge_workspace_peak()};
  nfedge_record(NFEDGE_REC_DONE, done, sizeof(done), 0, 0, 0, 0);
  return 0;
}

#else /* ---------------------------------------------------------------- Linux: files in the cwd */

static FILE *fin, *flog, *ftick;

static const int8_t *load_image(void) {
  static int8_t *image;
  FILE *f = fopen("image.bin", "rb");
  if (!f) return NULL;
  image = (int8_t *)aligned_alloc(64, (NFEDGE_IMAGE_BYTES + 63) / 64 * 64);
  size_t got = image ? fread(image, 1, NFEDGE_IMAGE_BYTES, f) : 0;
  fclose(f);
  return got == NFEDGE_IMAGE_BYTES ? image : NULL;
}

static int fail(int code, const char *what) {
  printf("nfedge-error: %s\n", what);
  fflush(stdout);
  return code;
}

static const char *io_open(void) {
  fin = fopen("input.bin", "rb");
  flog = fopen("logits.bin", "wb");
  ftick = fopen("ticks.bin", "wb");
  return fin && flog && ftick ? NULL : "cannot open input.bin/logits.bin/ticks.bin";
}

static int io_next(nfedge_input_t *x) {
  size_t got = fread(x, sizeof(nfedge_input_t), SAMPLE_ELEMS, fin);
  if (got == 0) return 0;
  return got == SAMPLE_ELEMS ? 1 : -1;
}

static int io_emit(uint32_t index, const nfedge_logit_t *out, size_t k, const uint64_t ticks[3]) {
  (void)index;
  return fwrite(out, sizeof(nfedge_logit_t), k, flog) == k && fwrite(ticks, sizeof(uint64_t), 3, ftick) == 3 ? 0 : -1;
}

static int io_close(uint32_t n) {
  fclose(fin);
  if (fclose(flog) != 0 || fclose(ftick) != 0) return -1;
  printf("nfedge-done samples=%lu workspace_peak=%lu\n", (unsigned long)n, (unsigned long)nfedge_workspace_peak());
  fflush(stdout);
  return 0;
}

#endif

int main(void) {
  nfedge_timer_init();
  nfedge_model_init();
  const int8_t *image = load_image();
  if (!image) return fail(NFEDGE_EXIT_IO, "cannot read image.bin");
  const char *err = io_open();
  if (err) return fail(NFEDGE_EXIT_IO, err);
  uint32_t n = 0;
  for (;;) {
    int got = io_next(x_buf);
    if (got == 0) break;
    if (got < 0) return fail(NFEDGE_EXIT_IO, "input.bin is not a whole number of samples");
    uint64_t ticks[3] = {0, 0, 0}, t0;
    t0 = nfedge_timer_ticks();
    if (nfedge_base_run(x_buf, image, logits) != 0) return fail(NFEDGE_EXIT_OPERATOR, "base model operator failed");
    ticks[0] = nfedge_timer_ticks() - t0;
    size_t k = NFEDGE_NUM_CLASSES;
#if NFEDGE_HAS_GENERATOR
    t0 = nfedge_timer_ticks();
    if (nfedge_generator_run(x_buf, fx_buf) != 0) return fail(NFEDGE_EXIT_OPERATOR, "generator operator failed");
    ticks[1] = nfedge_timer_ticks() - t0;
    t0 = nfedge_timer_ticks();
    if (nfedge_base_run(fx_buf, image, logits + NFEDGE_NUM_CLASSES) != 0)
      return fail(NFEDGE_EXIT_OPERATOR, "base model operator failed");
    ticks[2] = nfedge_timer_ticks() - t0;
    k *= 2;
#endif
    if (nfedge_workspace_failed()) return fail(NFEDGE_EXIT_WORKSPACE, "workspace pool exhausted");
    if (io_emit(n, logits, k, ticks) != 0) return fail(NFEDGE_EXIT_IO, "cannot write logits.bin/ticks.bin");
    ++n;
  }
  if (io_close(n) != 0) return fail(NFEDGE_EXIT_IO, "cannot close output files");
  return NFEDGE_EXIT_OK;
}
