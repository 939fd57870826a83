/* nfedge model library: the public API of an exported model (include/nfedge_model.h, docs/INTEGRATION.md).
 *
 * Compiled by the user's own toolchain with NFEDGE_LIBRARY defined, beside the generated model.c (the graphs over
 * a caller-bound arena) and nfedge_rt.c (operator calls, the LIFO workspace). Not re-entrant: one model instance,
 * one arena and workspace; calls must not overlap (no interrupt or second thread may call in meanwhile).
 *
 * Build options (0 or 1, default in brackets):
 *   NFEDGE_STATIC_BUFFERS [1]  built-in arena and workspace (sections .nfedge_arena, .nfedge_workspace), used by
 *                              nfedge_init(NULL, 0, NULL, 0)
 *   NFEDGE_RESERVE_IMAGE  [0]  int8_t nfedge_image[NFEDGE_IMAGE_BYTES] in section .nfedge_image, uninitialised:
 *                              the place for the (undervolted) weight SRAM, filled by the user at boot
 */
#include "nfedge_model.h"

#include <math.h>
#include <string.h>

#include "model.h"
#include "nfedge_rt.h"

#ifndef NFEDGE_STATIC_BUFFERS
#define NFEDGE_STATIC_BUFFERS 1
#endif
#ifndef NFEDGE_RESERVE_IMAGE
#define NFEDGE_RESERVE_IMAGE 0
#endif

#if NFEDGE_STATIC_BUFFERS
/* sized at least one alignment unit: a graph with no intermediate tensor still gets a valid pointer */
static uint8_t nfedge_static_arena[NFEDGE_ARENA_BYTES ? NFEDGE_ARENA_BYTES : NFEDGE_BUFFER_ALIGN]
    __attribute__((section(".nfedge_arena"), aligned(NFEDGE_BUFFER_ALIGN)));
static uint8_t nfedge_static_workspace[NFEDGE_WORKSPACE_BYTES ? NFEDGE_WORKSPACE_BYTES : NFEDGE_BUFFER_ALIGN]
    __attribute__((section(".nfedge_workspace"), aligned(NFEDGE_BUFFER_ALIGN)));
#endif

#if NFEDGE_RESERVE_IMAGE
int8_t nfedge_image[NFEDGE_IMAGE_BYTES] __attribute__((section(".nfedge_image"), aligned(NFEDGE_BUFFER_ALIGN)));
#endif

static int nfedge_ready;

static int misaligned(const void *p) { return ((uintptr_t)p % NFEDGE_BUFFER_ALIGN) != 0; }

int nfedge_init(void *arena, size_t arena_bytes, void *workspace, size_t workspace_bytes) {
  nfedge_ready = 0;
  if (arena == NULL && workspace == NULL && arena_bytes == 0 && workspace_bytes == 0) {
#if NFEDGE_STATIC_BUFFERS
    arena = nfedge_static_arena, arena_bytes = sizeof(nfedge_static_arena);
    workspace = nfedge_static_workspace, workspace_bytes = sizeof(nfedge_static_workspace);
#else
    return NFEDGE_ERR_NULL; /* built without the static buffers: the caller must pass its own */
#endif
  }
  if (arena == NULL || workspace == NULL) return NFEDGE_ERR_NULL;
  if (arena_bytes < NFEDGE_ARENA_BYTES) return NFEDGE_ERR_ARENA_SIZE;
  if (workspace_bytes < NFEDGE_WORKSPACE_BYTES) return NFEDGE_ERR_WORKSPACE_SIZE;
  if (misaligned(arena) || misaligned(workspace)) return NFEDGE_ERR_ALIGNMENT;
  nfedge_model_bind((uint8_t *)arena, (uint8_t *)workspace, workspace_bytes);
  nfedge_ready = 1;
  return NFEDGE_OK;
}

static int checked(int rc) {
  if (nfedge_workspace_failed()) return NFEDGE_ERR_WORKSPACE; /* sticky: the build-time bound was wrong */
  return rc == 0 ? NFEDGE_OK : NFEDGE_ERR_OPERATOR;
}

int nfedge_run_base(const nfedge_input_t *x, const void *image, size_t image_bytes, nfedge_logit_t *logits) {
  if (!nfedge_ready) return NFEDGE_ERR_NOT_INITIALIZED;
  if (x == NULL || image == NULL || logits == NULL) return NFEDGE_ERR_NULL;
  if (image_bytes != NFEDGE_IMAGE_BYTES) return NFEDGE_ERR_IMAGE_SIZE;
  return checked(nfedge_base_run(x, (const int8_t *)image, logits));
}

int nfedge_run_front(const nfedge_input_t *x, nfedge_input_t *fx) {
#if NFEDGE_HAS_GENERATOR
  if (!nfedge_ready) return NFEDGE_ERR_NOT_INITIALIZED;
  if (x == NULL || fx == NULL) return NFEDGE_ERR_NULL;
  return checked(nfedge_generator_run(x, fx));
#else
  (void)x, (void)fx;
  return NFEDGE_ERR_NO_GENERATOR;
#endif
}

int nfedge_run(const nfedge_input_t *x, const void *image, size_t image_bytes, nfedge_logit_t *logits) {
#if NFEDGE_HAS_GENERATOR
  /* F(x) between the two graphs: NFEDGE_INPUT_ELEMS inputs of .bss (nfedge_model.json memory.front_buffer_bytes) */
  static nfedge_input_t fx[NFEDGE_INPUT_ELEMS] __attribute__((aligned(NFEDGE_BUFFER_ALIGN)));
  int rc = nfedge_run_front(x, fx);
  return rc != NFEDGE_OK ? rc : nfedge_run_base(fx, image, image_bytes, logits);
#else
  return nfedge_run_base(x, image, image_bytes, logits);
#endif
}

int nfedge_quantize_input(const float *x, nfedge_input_t *q, size_t n) {
  if (x == NULL || q == NULL) return NFEDGE_ERR_NULL;
  for (size_t i = 0; i < n; ++i) {
#if NFEDGE_INTEGER
    /* round half up, saturated: nfedge.integer.scheme.quantize_to_int8, in double as on the host */
    double v = floor((double)x[i] / NFEDGE_INPUT_SCALE + 0.5);
    q[i] = (nfedge_input_t)(v > 127.0 ? 127 : v < -128.0 ? -128 : (int)v);
#else
    q[i] = x[i]; /* weight-only mode takes the float samples as they are */
#endif
  }
  return NFEDGE_OK;
}

uint32_t nfedge_crc32(const void *data, size_t n) {
  const uint8_t *p = (const uint8_t *)data;
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) { /* CRC-32, reflected polynomial 0xEDB88320 (zlib.crc32) */
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

int nfedge_check_image(const void *image, size_t image_bytes) {
  if (image == NULL) return NFEDGE_ERR_NULL;
  if (image_bytes != NFEDGE_IMAGE_BYTES) return NFEDGE_ERR_IMAGE_SIZE;
  return nfedge_crc32(image, image_bytes) == NFEDGE_IMAGE_CRC32 ? NFEDGE_OK : NFEDGE_ERR_IMAGE_CRC;
}

size_t nfedge_workspace_peak_bytes(void) { return nfedge_workspace_peak(); }
