# CMake toolchain file for bare-metal Arm Cortex-M with the GNU Arm toolchain (arm-none-eabi-gcc/g++).
#
#   cmake -S . -B build -DCMAKE_TOOLCHAIN_FILE=$PWD/cmake/arm-none-eabi.cmake \
#         -DCONSUMER_CPU=cortex-m55 -DCONSUMER_FLOAT_ABI=hard
#
# CONSUMER_CPU: cortex-m55 | cortex-m4; CONSUMER_FLOAT_ABI: hard | softfp. The flags set here are the user's own
# toolchain flags: the nfedge library (add_subdirectory of the exported folder) compiles its sources with them.
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)
# try_compile (the compiler checks) builds a static library: a bare-metal executable cannot link without a
# linker script and startup code.
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)

set(CMAKE_C_COMPILER arm-none-eabi-gcc)
set(CMAKE_CXX_COMPILER arm-none-eabi-g++)
set(CMAKE_AR arm-none-eabi-ar)
set(CMAKE_RANLIB arm-none-eabi-ranlib)
set(CMAKE_OBJCOPY arm-none-eabi-objcopy)
set(CMAKE_SIZE arm-none-eabi-size)

set(CONSUMER_CPU "cortex-m55" CACHE STRING "cortex-m55 | cortex-m4")
set(CONSUMER_FLOAT_ABI "hard" CACHE STRING "hard | softfp (the -mfloat-abi of everything linked)")
set_property(CACHE CONSUMER_CPU PROPERTY STRINGS cortex-m55 cortex-m4)
set_property(CACHE CONSUMER_FLOAT_ABI PROPERTY STRINGS hard softfp)
# the compiler checks re-read this file in a fresh project: pass the two choices on
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES CONSUMER_CPU CONSUMER_FLOAT_ABI)

if(CONSUMER_CPU STREQUAL "cortex-m55")
  set(_consumer_cpu_flags "-mcpu=cortex-m55 -mthumb")                      # FPU and MVE (Helium): -mfpu=auto
elseif(CONSUMER_CPU STREQUAL "cortex-m4")
  set(_consumer_cpu_flags "-mcpu=cortex-m4 -mthumb -mfpu=fpv4-sp-d16")
else()
  message(FATAL_ERROR "CONSUMER_CPU=${CONSUMER_CPU}: use cortex-m55 or cortex-m4")
endif()
if(NOT CONSUMER_FLOAT_ABI MATCHES "^(hard|softfp)$")
  message(FATAL_ERROR "CONSUMER_FLOAT_ABI=${CONSUMER_FLOAT_ABI}: use hard or softfp")
endif()

set(_consumer_flags "${_consumer_cpu_flags} -mfloat-abi=${CONSUMER_FLOAT_ABI} -O2 -ffunction-sections -fdata-sections")
set(CMAKE_C_FLAGS_INIT "${_consumer_flags}")
set(CMAKE_CXX_FLAGS_INIT "${_consumer_flags} -fno-exceptions -fno-rtti -fno-threadsafe-statics")
set(CMAKE_EXE_LINKER_FLAGS_INIT "-nostartfiles -Wl,--gc-sections")

# find_* look in the cross environment only, never in the host's folders
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
