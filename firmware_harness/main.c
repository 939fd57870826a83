/* nfedge evaluation main: streams inputs, runs generator + base model, writes logits and timer ticks.
 *
 * Files (semihosting on Cortex-M: paths relative to the emulator's working directory; plain stdio on
 * Linux targets):
 *   input.bin   float32 samples, C*H*W each, back to back (N = file size / sample size)
 *   logits.bin  per sample: base(x) logits [K], then base(F(x)) logits [K] when a generator is built in
 *   ticks.bin   per sample: uint64 ticks of base(x), G (the front F(x) = clip(x + G(x), -1, 1)), base(F(x))
 *   image.bin   (Linux targets only) the weight image; on Cortex-M the image sits at NFEDGE_IMAGE_ADDR,
 *               placed there by the emulator's loader, so one firmware runs against every faulty image
 * The last stdout line is "nfedge-done samples=N workspace_peak=B" on success.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "model.h"
#include "nfedge_rt.h"

#define SAMPLE_FLOATS (NFEDGE_IN_C * NFEDGE_IN_H * NFEDGE_IN_W)

static float x_buf[SAMPLE_FLOATS] __attribute__((aligned(16)));
#if NFEDGE_HAS_GENERATOR
static float fx_buf[SAMPLE_FLOATS] __attribute__((aligned(16)));
#endif
static float logits[2 * NFEDGE_NUM_CLASSES] __attribute__((aligned(16)));

#ifdef NFEDGE_IMAGE_ADDR
static const int8_t *load_image(void) { return (const int8_t *)(uintptr_t)NFEDGE_IMAGE_ADDR; }
#else
static const int8_t *load_image(void) {
  static int8_t *image;
  FILE *f = fopen("image.bin", "rb");
  if (!f) return NULL;
  image = (int8_t *)aligned_alloc(64, (NFEDGE_IMAGE_BYTES + 63) / 64 * 64);
  size_t got = image ? fread(image, 1, NFEDGE_IMAGE_BYTES, f) : 0;
  fclose(f);
  return got == NFEDGE_IMAGE_BYTES ? image : NULL;
}
#endif

static int fail(int code, const char *what) {
  printf("nfedge-error: %s\n", what);
  fflush(stdout);
  return code;
}

int main(void) {
  nfedge_timer_init();
  nfedge_model_init();
  const int8_t *image = load_image();
  if (!image) return fail(NFEDGE_EXIT_IO, "cannot read image.bin");
  FILE *fin = fopen("input.bin", "rb");
  FILE *flog = fopen("logits.bin", "wb");
  FILE *ftick = fopen("ticks.bin", "wb");
  if (!fin || !flog || !ftick) return fail(NFEDGE_EXIT_IO, "cannot open input.bin/logits.bin/ticks.bin");
  long n = 0;
  for (;;) {
    size_t got = fread(x_buf, sizeof(float), SAMPLE_FLOATS, fin);
    if (got == 0) break;
    if (got != SAMPLE_FLOATS) return fail(NFEDGE_EXIT_IO, "input.bin is not a whole number of samples");
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
    if (fwrite(logits, sizeof(float), k, flog) != k || fwrite(ticks, sizeof(uint64_t), 3, ftick) != 3)
      return fail(NFEDGE_EXIT_IO, "cannot write logits.bin/ticks.bin");
    ++n;
  }
  fclose(fin);
  if (fclose(flog) != 0 || fclose(ftick) != 0) return fail(NFEDGE_EXIT_IO, "cannot close output files");
  printf("nfedge-done samples=%ld workspace_peak=%lu\n", n, (unsigned long)nfedge_workspace_peak());
  fflush(stdout);
  return NFEDGE_EXIT_OK;
}
