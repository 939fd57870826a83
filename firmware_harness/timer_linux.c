/* Timer for Linux targets (Cortex-A under qemu-user, or native): nanoseconds of a monotonic clock.
 * Under qemu-user this is host wall time, not an instruction count (see the target descriptor). */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <time.h>

#include "nfedge_rt.h"

void nfedge_timer_init(void) {}

uint64_t nfedge_timer_ticks(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
