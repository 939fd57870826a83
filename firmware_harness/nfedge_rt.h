/* nfedge target runtime: the few lines of glue that replace TVM's removed micro runtime.
 *
 * TVM (0.27, tvm.tirx.build) emits each fused operator as a tvm-ffi "safe call" function
 *   int fn(void *self, const TVMFFIAny *args, int32_t num_args, TVMFFIAny *result)
 * taking DLTensor pointers. The generated model.c builds DLTensors over a static arena (offsets planned
 * on the host) and calls the operators in order; operators that need scratch memory call
 * TVMBackendAllocWorkspace through a function pointer, served here by a LIFO bump allocator.
 */
#ifndef NFEDGE_RT_H_
#define NFEDGE_RT_H_

#include <stddef.h>
#include <stdint.h>

#include <tvm/ffi/c_api.h>

/* Exit codes shared with nfedge/deploy/harness.py */
#define NFEDGE_EXIT_OK 0
#define NFEDGE_EXIT_IO 2        /* semihosting / file I/O failed */
#define NFEDGE_EXIT_OPERATOR 3  /* a compiled operator returned non-zero */
#define NFEDGE_EXIT_WORKSPACE 4 /* workspace pool exhausted (build-time bound was wrong) */
#define NFEDGE_EXIT_FAULT 250   /* CPU fault or unexpected interrupt */

typedef int (*nfedge_op_t)(void *self, const TVMFFIAny *args, int32_t num_args, TVMFFIAny *result);

/* Fill a DLTensor (CPU, compact row-major) */
void nfedge_tensor(DLTensor *t, void *data, int32_t ndim, const int64_t *shape, uint8_t code, uint8_t bits);
/* Call one operator on n DLTensor arguments; returns its status (0 = ok). */
int nfedge_call(nfedge_op_t op, DLTensor **tensors, int32_t n);

/* Workspace pool (size fixed at build time by the generated model.c) */
void nfedge_workspace_init(uint8_t *pool, size_t size);
size_t nfedge_workspace_peak(void);
int nfedge_workspace_failed(void);

/* Timer: free-running tick counter (SysTick on Cortex-M, a monotonic clock on Linux) */
void nfedge_timer_init(void);
uint64_t nfedge_timer_ticks(void);

#endif /* NFEDGE_RT_H_ */
