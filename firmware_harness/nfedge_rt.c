/* nfedge target runtime (see nfedge_rt.h). */
#include "nfedge_rt.h"

#include <string.h>

void nfedge_tensor(DLTensor *t, void *data, int32_t ndim, const int64_t *shape, uint8_t code, uint8_t bits) {
  memset(t, 0, sizeof(*t));
  t->data = data;
  t->device.device_type = kDLCPU;
  t->device.device_id = 0;
  t->ndim = ndim;
  t->dtype.code = code;
  t->dtype.bits = bits;
  t->dtype.lanes = 1;
  t->shape = (int64_t *)shape;
  t->strides = NULL;
  t->byte_offset = 0;
}

/* ---- workspace: LIFO bump allocator (TVM frees workspaces in reverse order of allocation) ---- */
static uint8_t *ws_pool;
static size_t ws_size, ws_top, ws_peak;
static int ws_failed;

#define NFEDGE_MAX_ARGS 16

int nfedge_call(nfedge_op_t op, DLTensor **tensors, int32_t n) {
  TVMFFIAny args[NFEDGE_MAX_ARGS];
  TVMFFIAny result;
  if (n > NFEDGE_MAX_ARGS) return -1;
  for (int32_t i = 0; i < n; ++i) {
    memset(&args[i], 0, sizeof(args[i]));
    args[i].type_index = kTVMFFIDLTensorPtr;
    args[i].v_ptr = tensors[i];
  }
  memset(&result, 0, sizeof(result));
  result.type_index = kTVMFFINone;
  ws_top = 0; /* no workspace outlives an operator call */
  return op(NULL, args, n, &result);
}

void nfedge_workspace_init(uint8_t *pool, size_t size) {
  ws_pool = pool;
  ws_size = size;
  ws_top = 0;
}

size_t nfedge_workspace_peak(void) { return ws_peak; }
int nfedge_workspace_failed(void) { return ws_failed; }

#define WS_ALIGN 16u
#define WS_HEADER 16u /* stores the previous top so a free can pop it */

static void *nfedge_alloc_workspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                                    int dtype_bits_hint) {
  (void)device_type, (void)device_id, (void)dtype_code_hint, (void)dtype_bits_hint;
  size_t need = WS_HEADER + (((size_t)nbytes + WS_ALIGN - 1) & ~(size_t)(WS_ALIGN - 1));
  if (ws_pool == NULL || ws_top + need > ws_size) {
    ws_failed = 1;
    return NULL;
  }
  uint8_t *block = ws_pool + ws_top;
  ((size_t *)block)[0] = ws_top;        /* top before this block */
  ((size_t *)block)[1] = ws_top + need; /* top after it */
  ws_top += need;
  if (ws_top > ws_peak) ws_peak = ws_top;
  return block + WS_HEADER;
}

static int nfedge_free_workspace(int device_type, int device_id, void *ptr) {
  (void)device_type, (void)device_id;
  if (ptr == NULL) return 0;
  size_t *hdr = (size_t *)((uint8_t *)ptr - WS_HEADER);
  if (hdr[1] == ws_top) ws_top = hdr[0]; /* LIFO pop; an out-of-order free just waits for the reset */
  return 0;
}

/* TVM's LLVM code calls workspaces through these (weak, zero-initialised in every operator object);
 * these strong definitions win at link time, so no runtime registration step is needed. */
void *(*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = nfedge_alloc_workspace;
int (*__TVMBackendFreeWorkspace)(int, int, void *) = nfedge_free_workspace;
