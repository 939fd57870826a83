/* CMSIS-NN side-by-side bench firmware (bench/bench_cmsis_nn.py builds and runs it; nfedge itself never does).
 *
 * The host writes a blob of layer descriptors and their data (int8 codes NHWC/OHWI, int32 biases, CMSIS-NN
 * multipliers and shifts, int8 inputs) that QEMU's -device loader places at BENCH_BLOB_ADDR (the target's input
 * region). For each layer this firmware copies the inputs into a RAM arena, calls one CMSIS-NN function between two
 * SysTick reads (firmware_harness/startup_cm.c's nfedge_timer_ticks, as nfedge's firmware does), then sends the
 * ticks, the function's status and scratch size, and the output bytes over the UART as nfedge records
 * ('L' layer, 'O' output chunk). The host compares the outputs with nfedge's integer reference.
 */
#include <stdint.h>
#include <string.h>

#include "arm_nnfunctions.h"
#include "nfedge_rt.h"

#define BLOB_MAGIC 0x42434E4Eu /* "NNCB" */
#define REC_LAYER 'L'
#define REC_OUT 'O'

#define K_CONV 0
#define K_DW 1
#define K_FC 2
#define K_FC_PC 3
#define K_MAXPOOL 4
#define K_AVGPOOL 5
#define K_ADD 6
#define K_UPSAMPLE 7
/* BENCH_KINDS: a bit per kind this firmware links (the host links one per model, so its code bytes count only the
 * CMSIS-NN functions that model calls) */
#ifndef BENCH_KINDS
#define BENCH_KINDS 0xFF
#endif
#define HAS(k) ((BENCH_KINDS >> (k)) & 1)

typedef struct {
  int32_t kind, in_h, in_w, in_c, out_h, out_w, out_c, k_h, k_w, stride_h, stride_w, pad_h, pad_w, act_min, act_max;
  int32_t ch_mult, factor;
  int32_t a_mult, a_shift, b_mult, b_shift, left_shift, o_mult, o_shift; /* add (TFLite ADD arithmetic) */
  uint32_t in_off, in2_off, w_off, bias_off, mult_off, shift_off, lut_off, pt_mult, pt_shift;
  uint32_t in_bytes, in2_bytes, out_bytes;
} layer_t;

typedef struct {
  uint32_t magic, version, count, arena_bytes, scratch_bytes;
  uint32_t layer_off[];
} blob_t;

#ifndef ARENA_BYTES
#define ARENA_BYTES (256 * 1024)
#endif
#ifndef SCRATCH_BYTES
#define SCRATCH_BYTES (64 * 1024)
#endif
static int8_t arena[ARENA_BYTES] __attribute__((aligned(16)));
static int8_t scratch[SCRATCH_BYTES] __attribute__((aligned(16)));

static int32_t run_layer(const uint8_t *base, const layer_t *L, int8_t *in, int8_t *in2, int8_t *out, int32_t *scratch_used,
                         uint64_t *ticks) {
  cmsis_nn_context ctx = {scratch, 0};
  cmsis_nn_dims in_d = {1, L->in_h, L->in_w, L->in_c}, out_d = {1, L->out_h, L->out_w, L->out_c};
  cmsis_nn_dims f_d = {L->out_c, L->k_h, L->k_w, L->in_c}, b_d = {1, 1, 1, L->out_c};
  cmsis_nn_per_channel_quant_params q = {(int32_t *)(base + L->mult_off), (int32_t *)(base + L->shift_off)};
  const int8_t *w = (const int8_t *)(base + L->w_off);
  const int32_t *bias = L->bias_off ? (const int32_t *)(base + L->bias_off) : 0;
  int32_t st = 0;
  uint64_t t0 = 0, t1 = 0;
  switch (L->kind) {
#if HAS(K_CONV)
    case K_CONV: {
      cmsis_nn_conv_params p = {0, 0, {L->stride_w, L->stride_h}, {L->pad_w, L->pad_h}, {1, 1}, {L->act_min, L->act_max}};
      ctx.size = arm_convolve_wrapper_s8_get_buffer_size(&p, &in_d, &f_d, &out_d);
      if (ctx.size > SCRATCH_BYTES) return -100;
      t0 = nfedge_timer_ticks();
      st = arm_convolve_wrapper_s8(&ctx, &p, &q, &in_d, in, &f_d, w, &b_d, bias, &out_d, out);
      t1 = nfedge_timer_ticks();
      break;
    }
#endif
#if HAS(K_DW)
    case K_DW: {
      cmsis_nn_dw_conv_params p = {0, 0, L->ch_mult, {L->stride_w, L->stride_h}, {L->pad_w, L->pad_h}, {1, 1},
                                   {L->act_min, L->act_max}};
      cmsis_nn_dims fd = {1, L->k_h, L->k_w, L->out_c};
      ctx.size = arm_depthwise_conv_wrapper_s8_get_buffer_size(&p, &in_d, &fd, &out_d);
      if (ctx.size > SCRATCH_BYTES) return -100;
      t0 = nfedge_timer_ticks();
      st = arm_depthwise_conv_wrapper_s8(&ctx, &p, &q, &in_d, in, &fd, w, &b_d, bias, &out_d, out);
      t1 = nfedge_timer_ticks();
      break;
    }
#endif
#if HAS(K_FC) || HAS(K_FC_PC)
    case K_FC:
    case K_FC_PC: {
      cmsis_nn_fc_params p = {0, 0, 0, {L->act_min, L->act_max}};
      cmsis_nn_dims fin = {1, 1, 1, L->in_h * L->in_w * L->in_c};
      cmsis_nn_dims fd = {L->in_h * L->in_w * L->in_c, 1, 1, L->out_c};
      cmsis_nn_dims od = {1, 1, 1, L->out_c};
      ctx.size = arm_fully_connected_s8_get_buffer_size(&fd);
      if (ctx.size > SCRATCH_BYTES) return -100;
      /* the kernel sums (with no input offset: the biases) in the buffer, outside the timed call: TFLM computes them
       * once, at Prepare, not per inference */
      if (ctx.size > 0) arm_vector_sum_s8(ctx.buf, fd.n, od.c, w, 0, 0, bias);
      t0 = nfedge_timer_ticks();
      if (L->kind == K_FC && HAS(K_FC)) {
        cmsis_nn_per_tensor_quant_params pq = {(int32_t)L->pt_mult, (int32_t)L->pt_shift};
        st = arm_fully_connected_s8(&ctx, &p, &pq, &fin, in, &fd, w, &b_d, bias, &od, out);
      } else if (HAS(K_FC_PC)) {
        st = arm_fully_connected_per_channel_s8(&ctx, &p, &q, &fin, in, &fd, w, &b_d, bias, &od, out);
      }
      t1 = nfedge_timer_ticks();
      break;
    }
#endif
#if HAS(K_MAXPOOL) || HAS(K_AVGPOOL)
    case K_MAXPOOL:
    case K_AVGPOOL: {
      cmsis_nn_pool_params p = {{L->stride_w, L->stride_h}, {L->pad_w, L->pad_h}, {L->act_min, L->act_max}};
      cmsis_nn_dims fd = {1, L->k_h, L->k_w, 1};
#if HAS(K_AVGPOOL)
      ctx.size = L->kind == K_AVGPOOL ? arm_avgpool_s8_get_buffer_size(L->out_w, L->in_c) : 0;
#endif
      if (ctx.size > SCRATCH_BYTES) return -100;
      t0 = nfedge_timer_ticks();
#if HAS(K_MAXPOOL)
      if (L->kind == K_MAXPOOL) st = arm_max_pool_s8(&ctx, &p, &in_d, in, &fd, &out_d, out);
#endif
#if HAS(K_AVGPOOL)
      if (L->kind == K_AVGPOOL) st = arm_avgpool_s8(&ctx, &p, &in_d, in, &fd, &out_d, out);
#endif
      t1 = nfedge_timer_ticks();
      break;
    }
#endif
#if HAS(K_ADD)
    case K_ADD:
      t0 = nfedge_timer_ticks();
      st = arm_elementwise_add_s8(in, in2, 0, L->a_mult, L->a_shift, 0, L->b_mult, L->b_shift, L->left_shift, out, 0,
                                  L->o_mult, L->o_shift, L->act_min, L->act_max, L->out_h * L->out_w * L->out_c);
      t1 = nfedge_timer_ticks();
      break;
#endif
#if HAS(K_UPSAMPLE)
    case K_UPSAMPLE: { /* no CMSIS-NN function: plain C nearest-neighbour resize, NHWC (TFLM's reference kernel does this) */
      const int32_t f = L->factor, c = L->in_c, ow = L->out_w;
      t0 = nfedge_timer_ticks();
      for (int32_t y = 0; y < L->out_h; ++y) {
        const int8_t *src_row = in + (y / f) * L->in_w * c;
        int8_t *dst = out + y * ow * c;
        for (int32_t x = 0; x < ow; ++x) memcpy(dst + x * c, src_row + (x / f) * c, (size_t)c);
      }
      t1 = nfedge_timer_ticks();
      break;
    }
#endif
    default:
      return -101;
  }
  if (L->lut_off && st == 0) { /* a table activation after the layer: plain C, 256 entries indexed by q + 128 */
    const int8_t *lut = (const int8_t *)(base + L->lut_off);
    uint64_t t2 = nfedge_timer_ticks();
    for (uint32_t i = 0; i < L->out_bytes; ++i) out[i] = lut[out[i] + 128];
    t1 += nfedge_timer_ticks() - t2;
  }
  *scratch_used = ctx.size;
  *ticks = t1 - t0;
  return st;
}

int main(void) {
  const blob_t *b = (const blob_t *)BENCH_BLOB_ADDR;
  const uint8_t *base = (const uint8_t *)b;
  if (b->magic != BLOB_MAGIC) return NFEDGE_EXIT_IO;
  nfedge_timer_init();
  for (uint32_t i = 0; i < b->count; ++i) {
    const layer_t *L = (const layer_t *)(base + b->layer_off[i]);
    /* inputs at the start of the arena (16-byte aligned), the output after them: planned on the host */
    uint32_t a1 = (L->in_bytes + 15u) & ~15u, a2 = (L->in2_bytes + 15u) & ~15u;
    if (a1 + a2 + L->out_bytes > ARENA_BYTES) return NFEDGE_EXIT_WORKSPACE;
    int8_t *in = arena, *in2 = arena + a1, *out = arena + a1 + a2;
    memcpy(in, base + L->in_off, L->in_bytes);
    if (L->in2_bytes) memcpy(in2, base + L->in2_off, L->in2_bytes);
    memset(out, 0x55, L->out_bytes);
    memset(scratch, 0, SCRATCH_BYTES);
    int32_t used = 0;
    uint64_t ticks = 0;
    int32_t st = run_layer(base, L, in, in2, out, &used, &ticks);
    uint32_t head[3] = {i, (uint32_t)st, (uint32_t)used};
    nfedge_record(REC_LAYER, head, sizeof head, &ticks, sizeof ticks, 0, 0);
    for (uint32_t off = 0; off < L->out_bytes; off += 4096u) {
      uint32_t n = L->out_bytes - off < 4096u ? L->out_bytes - off : 4096u;
      uint32_t h2[2] = {i, off};
      nfedge_record(REC_OUT, h2, sizeof h2, out + off, n, 0, 0);
    }
  }
  return NFEDGE_EXIT_OK;
}
