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

/* Exit codes: nfedge/deploy/guest_io.py EXIT_REASONS (tests/deploy/test_guest_io.py keeps the two equal) */
#define NFEDGE_EXIT_OK 0
#define NFEDGE_EXIT_IO 2        /* reading the inputs or writing the outputs failed */
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

#ifdef NFEDGE_UART_ADDR
/* Bare-metal target I/O (firmware_harness/startup_cm.c): no semihosting, so the guest never reaches the
 * host. Inputs: a block at NFEDGE_INPUT_ADDR placed by QEMU's -device loader (header below, then the
 * samples from NFEDGE_INPUT_HEADER on: float32, or int8 for an integer build). Outputs: framed records on the CMSDK APB UART at
 * NFEDGE_UART_ADDR, which QEMU captures into a file in the run's temp folder. Each record is
 *   'N' 'F' | type (1 byte) | payload length (uint16 LE) | payload | CRC-32 (zlib) of type, length, payload
 * (the protocol's one definition on the host: nfedge/deploy/guest_io.py, checked against this file by
 * tests/deploy/test_guest_io.py). */
#define NFEDGE_INPUT_MAGIC 0x4E49464Eu /* "NFIN" */
#define NFEDGE_INPUT_VERSION 1u
#define NFEDGE_INPUT_HEADER 64u /* bytes before the first sample */
typedef struct {
  uint32_t magic, version, count, sample_bytes; /* count samples of sample_bytes each */
} nfedge_input_header;

#define NFEDGE_REC_SAMPLE 'S'  /* uint32 index, logits[K or 2K] (float32; int32 in integer mode), uint64 ticks[3] */
#define NFEDGE_REC_MESSAGE 'M' /* text (an error or fault line) */
#define NFEDGE_REC_DONE 'D'    /* uint32 samples, uint32 workspace peak bytes */
#define NFEDGE_REC_EXIT 'E'    /* uint32 exit status (NFEDGE_EXIT_*): always the last record */

void nfedge_uart_init(void);
/* One record whose payload is the concatenation of up to three pieces (NULL/0 for unused ones). */
void nfedge_record(uint8_t type, const void *a, uint32_t na, const void *b, uint32_t nb, const void *c, uint32_t nc);
/* Send the exit record, then request a system reset (AIRCR.SYSRESETREQ), which QEMU's -no-reboot turns
 * into an exit: the status travels over the UART, not through the emulator's exit code. */
__attribute__((noreturn)) void nfedge_exit(int status);
#endif

#endif /* NFEDGE_RT_H_ */
