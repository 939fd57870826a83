// The consumer's main as C++ (CMake option CONSUMER_CXX=ON): the same program as main.c, which is written in the
// common subset of C and C++. nfedge_model.h is included first, by a C++ translation unit: its extern "C"
// guard is what lets these calls reach the C library's unmangled symbols (without it the link fails with
// undefined references to nfedge_init(void*, unsigned int, void*, unsigned int) and the like).
#include "nfedge_model.h"

static_assert(NFEDGE_BUFFER_ALIGN >= 4 && (NFEDGE_BUFFER_ALIGN & (NFEDGE_BUFFER_ALIGN - 1)) == 0,
              "NFEDGE_BUFFER_ALIGN is a power of two");

#include "main.c"
