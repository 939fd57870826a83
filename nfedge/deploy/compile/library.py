"""`nfedge export`: a bundle's model as a library a user links into their own firmware (docs/INTEGRATION.md).

    export_library(ExportConfig(), "runs/bundle", "runs/model-lib")

The folder compiles with nothing but an Arm GCC toolchain (nothing of nfedge's Python install is read there):
  include/nfedge_model.h   the public C API (extern "C", no TVM type), the model's sizes and status codes
  src/                     the generated graphs (model.c, model.h), the runtime glue, the API (nfedge_api.c)
  third_party/tvm-ffi/     the two ABI headers the glue needs (c_api.h, dlpack.h) with their licence
  lib/soft|hard/           the kernels (libnfedge_ops.a) for -mfloat-abi=soft/softfp and for hard
  weights/                 the clean image (weights.bin; nfedge_weights.c: the same as a const array)
  linker/                  nfedge_sections.ld, the fragment that places the image, arena and workspace
  CMakeLists.txt, nfedge.mk, nfedge_model.json (sizes, CRC-32 and sha256, geometry, flags, versions), README.md
The bundle must have been built with `nfedge build --emit library` (its library/ holds the kernels per ABI).
Nothing of the bundle runs here: its files are read (load_bundle checks every sha256) and copied.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from nfedge.config import StageConfig, require
from nfedge.deploy.bundle import Bundle, load_bundle
from nfedge.deploy.compile.link import LIBRARY_FLOAT_ABIS
from nfedge.deploy.compile.toolchain import firmware_dir, tvm_ffi_include
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_dir, atomic_write_json, sha256_file
from nfedge.integer.calibrate import INPUT_SCALE
from nfedge.progress import QUIET, Progress
from nfedge.sram.image import read_image

__all__ = ["ExportConfig", "export_library", "STATUS_CODES"]

EXPORT_FORMAT, EXPORT_VERSION = "nfedge-library", 1
# nfedge_api.c's status codes (3 and 4 are the runtime's NFEDGE_EXIT_OPERATOR/WORKSPACE, guest_io.EXIT_REASONS)
STATUS_CODES = {
    "NFEDGE_OK": (0, "success"),
    "NFEDGE_ERR_OPERATOR": (3, "a compiled operator returned an error"),
    "NFEDGE_ERR_WORKSPACE": (4, "the workspace ran out (sticky: the build-time bound was wrong)"),
    "NFEDGE_ERR_NOT_INITIALIZED": (10, "nfedge_init has not succeeded"),
    "NFEDGE_ERR_NULL": (11, "a required pointer is NULL"),
    "NFEDGE_ERR_ARENA_SIZE": (12, "the arena is smaller than NFEDGE_ARENA_BYTES"),
    "NFEDGE_ERR_WORKSPACE_SIZE": (13, "the workspace is smaller than NFEDGE_WORKSPACE_BYTES"),
    "NFEDGE_ERR_ALIGNMENT": (14, "the arena or workspace is not NFEDGE_BUFFER_ALIGN-aligned"),
    "NFEDGE_ERR_IMAGE_SIZE": (15, "image_bytes is not NFEDGE_IMAGE_BYTES"),
    "NFEDGE_ERR_IMAGE_CRC": (16, "the image's CRC-32 is not the clean image's (nfedge_check_image)"),
    "NFEDGE_ERR_NO_GENERATOR": (17, "the model has no generator front"),
}
_SHARED_MACROS = ("NUM_CLASSES", "HAS_GENERATOR", "IMAGE_BYTES", "ARENA_BYTES", "WORKSPACE_BYTES", "INTEGER")


@dataclasses.dataclass(frozen=True)
class ExportConfig(StageConfig):
    """What goes into the library folder besides the required files."""

    weights_array: bool = True  # also weights/nfedge_weights.c: the clean image as a const array (~6 bytes of C a code)
    # `nfedge faultrun --out` JSON of this very bundle: its measured instructions per inference go into the metadata
    instructions_from: str | None = None

    def validate(self) -> None:
        require(isinstance(self.weights_array, bool), "weights_array must be true or false")
        require(self.instructions_from is None or (isinstance(self.instructions_from, str) and self.instructions_from),
                "instructions_from must be a faultrun JSON path or None")


def export_library(cfg: ExportConfig, bundle_dir: str | Path, out_dir: str | Path, progress: Progress = QUIET) -> Path:
    """Write the library folder for the bundle's model (atomically: complete or not at all); returns its path."""
    bundle = load_bundle(bundle_dir)
    if not bundle.target.is_bare_metal:
        raise NfedgeError(f"bundle {bundle.path} is for {bundle.target.name} ({bundle.kind}); a firmware library "
                          "exists for bare-metal targets only")
    missing = [abi for abi in LIBRARY_FLOAT_ABIS if f"library/{abi}/libnfedge_ops.a" not in bundle.manifest["files"]]
    if missing:
        raise NfedgeError(f"bundle {bundle.path} has no library kernels ({', '.join(missing)}): rebuild it with "
                          "`nfedge build ... --emit library`")
    image = read_image(bundle.path / "image")
    codes = image.codes.tobytes()
    measured = _measured_instructions(cfg.instructions_from, bundle) if cfg.instructions_from else None
    macros = _model_macros((bundle.path / "model.h").read_text())
    fw, ffi = firmware_dir(), Path(tvm_ffi_include())
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        copies = {"src/model.c": bundle.path / "model.c", "src/model.h": bundle.path / "model.h",
                  "src/nfedge_rt.c": fw / "nfedge_rt.c", "src/nfedge_rt.h": fw / "nfedge_rt.h",
                  "src/nfedge_api.c": fw / "nfedge_api.c", "linker/nfedge_sections.ld": fw / "nfedge_sections.ld",
                  "third_party/tvm-ffi/include/tvm/ffi/c_api.h": ffi / "tvm" / "ffi" / "c_api.h",
                  "third_party/tvm-ffi/include/dlpack/dlpack.h": ffi / "dlpack" / "dlpack.h",
                  **{f"third_party/tvm-ffi/{name}": _ffi_licence(name) for name in ("LICENSE", "NOTICE")},
                  **{f"lib/{abi}/libnfedge_ops.a": bundle.path / "library" / abi / "libnfedge_ops.a"
                     for abi in LIBRARY_FLOAT_ABIS}}
        for rel, src in copies.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        (tmp / "weights").mkdir()
        (tmp / "weights" / "weights.bin").write_bytes(codes)
        if cfg.weights_array:
            (tmp / "weights" / "nfedge_weights.c").write_text(_weights_array(codes))
        (tmp / "include").mkdir()
        (tmp / "include" / "nfedge_model.h").write_text(_public_header(bundle, macros, zlib.crc32(codes)))
        (tmp / "CMakeLists.txt").write_text(_CMAKE)
        (tmp / "nfedge.mk").write_text(_MAKE)
        (tmp / "README.md").write_text(_README)
        atomic_write_json(tmp / "nfedge_model.json", _metadata(cfg, bundle, image, codes, macros) | {
            "instructions_per_inference": measured,  # None: not measured (pass instructions_from)
            "instructions_note": "QEMU -icount instruction counts of this bundle's firmware (nfedge faultrun), not cycles"})
    progress.info(f"export: library for {bundle.target.name} written to {out_dir}")
    return out_dir


def _measured_instructions(path: str, bundle: Bundle) -> dict[str, Any]:
    """instructions_per_inference of a faultrun result, refused unless it ran this very bundle."""
    p = Path(path)
    try:
        run = json.loads(p.read_text())
        ran, ipi = run["bundle_manifest_sha256"], run["instructions_per_inference"]
    except FileNotFoundError:
        raise NfedgeError(f"faultrun result {p} does not exist") from None
    except (ValueError, KeyError, TypeError) as e:
        raise NfedgeError(f"{p} is not an nfedge faultrun result ({type(e).__name__}: {e})") from None
    if ran != sha256_file(bundle.path / "manifest.json"):
        raise NfedgeError(f"faultrun result {p} measured another build than bundle {bundle.path} (manifest sha256 differs)")
    return ipi


def _model_macros(model_h: str) -> dict[str, str]:
    """NFEDGE_* macros of the generated model.h, as written there (the public header repeats them token for token,
    so a source that includes both sees one definition)."""
    return dict(re.findall(r"^#define NFEDGE_(\w+) (.+)$", model_h, flags=re.M))


def _ffi_licence(name: str) -> Path:
    """tvm-ffi's LICENSE or NOTICE from its installed distribution (Apache-2.0), shipped beside its headers."""
    import importlib.metadata

    dist = importlib.metadata.distribution("apache-tvm-ffi")
    for f in dist.files or ():
        if f.name == name:
            return Path(dist.locate_file(f))
    raise NfedgeError(f"the installed apache-tvm-ffi has no {name} file to ship with its headers")


def _public_header(bundle: Bundle, macros: dict[str, str], crc: int) -> str:
    c, h, w = bundle.input_shape
    integer = bundle.mode == "integer"
    in_t, out_t = ("int8_t", "int32_t") if integer else ("float", "float")
    lines = ["/* nfedge model library: the public API (docs/INTEGRATION.md). Generated by nfedge export: do not edit. */",
             "#ifndef NFEDGE_MODEL_PUBLIC_H_", "#define NFEDGE_MODEL_PUBLIC_H_", "", "#include <stddef.h>",
             "#include <stdint.h>", "", "#ifdef __cplusplus", 'extern "C" {', "#endif", "",
             f"#define NFEDGE_INPUT_C {c}", f"#define NFEDGE_INPUT_H {h}", f"#define NFEDGE_INPUT_W {w}",
             f"#define NFEDGE_INPUT_ELEMS {c * h * w}",
             *(f"#define NFEDGE_{k} {macros[k]}" for k in _SHARED_MACROS),
             f"#define NFEDGE_INPUT_SCALE {INPUT_SCALE!r} /* integer mode: x_q = sat8(floor(x / scale + 0.5)) */",
             f"#define NFEDGE_IMAGE_CRC32 0x{crc:08x}u /* CRC-32 (zlib) of the clean image */",
             "#define NFEDGE_BUFFER_ALIGN 16u /* bytes: the arena and the workspace */", "",
             f"typedef {in_t} nfedge_input_t; /* one sample: NFEDGE_INPUT_ELEMS values, C x H x W */",
             f"typedef {out_t} nfedge_logit_t; /* NFEDGE_NUM_CLASSES per sample */", "",
             *(f"#define {k} {v}{' ' * max(1, 28 - len(k) - len(str(v)))}/* {why} */" for k, (v, why) in STATUS_CODES.items()),
             "",
             "/* arena >= NFEDGE_ARENA_BYTES, workspace >= NFEDGE_WORKSPACE_BYTES, both NFEDGE_BUFFER_ALIGN-aligned;",
             " * all four 0/NULL: the library's own static buffers (unless built with NFEDGE_STATIC_BUFFERS=0). */",
             "int nfedge_init(void *arena, size_t arena_bytes, void *workspace, size_t workspace_bytes);",
             "/* the generator front at nominal voltage: fx = F(x) = clip(x + G(x)) (NFEDGE_ERR_NO_GENERATOR without one) */",
             "int nfedge_run_front(const nfedge_input_t *x, nfedge_input_t *fx);",
             "/* the base model on x, its weights read from `image` (the undervolted bank), NFEDGE_IMAGE_BYTES long */",
             "int nfedge_run_base(const nfedge_input_t *x, const void *image, size_t image_bytes, nfedge_logit_t *logits);",
             "/* base(F(x)) with a generator (F(x) in the library's own NFEDGE_INPUT_ELEMS-input buffer), base(x) without */",
             "int nfedge_run(const nfedge_input_t *x, const void *image, size_t image_bytes, nfedge_logit_t *logits);",
             "/* float samples in [-1, 1] -> the model's input (integer mode: int8 at NFEDGE_INPUT_SCALE) */",
             "int nfedge_quantize_input(const float *x, nfedge_input_t *q, size_t n);",
             "uint32_t nfedge_crc32(const void *data, size_t n);",
             "/* NFEDGE_OK when the image is the clean one (e.g. a boot-time check before undervolting) */",
             "int nfedge_check_image(const void *image, size_t image_bytes);",
             "size_t nfedge_workspace_peak_bytes(void);", "",
             "/* built with NFEDGE_RESERVE_IMAGE=1: the image's place, section .nfedge_image (linker/nfedge_sections.ld) */",
             "extern int8_t nfedge_image[NFEDGE_IMAGE_BYTES];",
             "/* built with weights/nfedge_weights.c (NFEDGE_WEIGHTS_ARRAY): the clean image, section .nfedge_weights */",
             "extern const int8_t nfedge_weights[NFEDGE_IMAGE_BYTES];", "",
             "#ifdef __cplusplus", "}", "#endif", "#endif", ""]
    return "\n".join(lines)


def _weights_array(codes: bytes) -> str:
    vals = np.frombuffer(codes, dtype=np.int8)
    rows = [", ".join(str(int(v)) for v in vals[i:i + 32]) for i in range(0, vals.size, 32)]
    return ("/* The clean weight image as a const array (nfedge export). Place section .nfedge_weights where your\n"
            " * firmware keeps the image, or copy it into the undervolted bank at boot. */\n"
            '#include "nfedge_model.h"\n\n'
            "const int8_t nfedge_weights[NFEDGE_IMAGE_BYTES] __attribute__((section(\".nfedge_weights\"), aligned(16))) = {\n"
            + ",\n".join(f"  {r}" for r in rows) + "\n};\n")


def _metadata(cfg: ExportConfig, bundle: Bundle, image, codes: bytes, macros: dict[str, str]) -> dict[str, Any]:
    m = bundle.manifest
    sizes = m.get("sizes", {})
    return {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "config": cfg.to_dict(),
        "target": bundle.target.name, "mode": bundle.mode,
        "input": {"shape": list(bundle.input_shape), "dtype": bundle.input_dtype,
                  "scale": INPUT_SCALE if bundle.mode == "integer" else None},
        "output": {"shape": [bundle.num_classes], "dtype": bundle.logit_dtype},
        "has_generator": bundle.has_generator,
        "memory": {"arena_bytes": int(macros["ARENA_BYTES"].rstrip("u")),
                   "workspace_bytes": int(macros["WORKSPACE_BYTES"].rstrip("u")),
                   "arena_bytes_by_graph": sizes.get("arena_bytes_by_graph"),
                   "workspace_bound_by_graph": sizes.get("workspace_bound_by_graph"),
                   # nfedge_run's F(x) between the two graphs (nfedge_api.c, .bss), with a generator
                   "front_buffer_bytes": (int(np.prod(bundle.input_shape)) * np.dtype(bundle.input_dtype).itemsize
                                          if bundle.has_generator else 0),
                   "kernels_object_bytes": {abi: (bundle.path / "library" / abi / "libnfedge_ops.a").stat().st_size
                                            for abi in LIBRARY_FLOAT_ABIS},
                   "harness_firmware": {k: sizes.get(k) for k in ("code_bytes", "data_bytes", "bss_bytes", "stack_bytes")}},
        "image": {"bytes": len(codes), "crc32": f"0x{zlib.crc32(codes):08x}",
                  "sha256": image.manifest.image_sha256, "bits": image.manifest.bits,
                  "geometry": dataclasses.asdict(image.manifest.geometry)},
        "float_abis": {abi: list(flags) for abi, flags in LIBRARY_FLOAT_ABIS.items()},
        "target_flags": {"cflags": list(bundle.target.toolchain.cflags), "tvm": bundle.target.tvm_target_dict},
        "status_codes": {k: v for k, (v, _) in STATUS_CODES.items()},
        "versions": m.get("versions", {}),
        "bundle_manifest_sha256": sha256_file(bundle.path / "manifest.json"),
    }


_CMAKE = """# nfedge model library (docs/INTEGRATION.md). In your firmware's CMakeLists.txt:
#   set(NFEDGE_FLOAT_ABI hard)                  # soft | softfp | hard: what your -mfloat-abi is
#   add_subdirectory(path/to/this/folder nfedge)
#   target_link_libraries(app PRIVATE nfedge_model)
# and in your linker script: REGION_ALIAS(...) + INCLUDE nfedge_sections.ld (this folder's linker/ is on the
# library search path). The sources compile with your toolchain and flags.
cmake_minimum_required(VERSION 3.16)
project(nfedge_model C)

set(NFEDGE_FLOAT_ABI "" CACHE STRING "soft | softfp | hard: the -mfloat-abi your firmware is built with")
option(NFEDGE_STATIC_BUFFERS "built-in arena and workspace (nfedge_init(NULL, 0, NULL, 0))" ON)
option(NFEDGE_RESERVE_IMAGE "define nfedge_image[] in section .nfedge_image" OFF)
option(NFEDGE_WEIGHTS_ARRAY "compile weights/nfedge_weights.c (the clean image as a const array)" OFF)

if(NFEDGE_FLOAT_ABI STREQUAL "hard")
  set(_nfedge_kernels hard)
elseif(NFEDGE_FLOAT_ABI STREQUAL "soft" OR NFEDGE_FLOAT_ABI STREQUAL "softfp")
  set(_nfedge_kernels soft)
else()
  message(FATAL_ERROR "nfedge: set NFEDGE_FLOAT_ABI to soft, softfp or hard (your -mfloat-abi), got '${NFEDGE_FLOAT_ABI}'")
endif()

add_library(nfedge_ops STATIC IMPORTED GLOBAL)
set_target_properties(nfedge_ops PROPERTIES IMPORTED_LOCATION
                      "${CMAKE_CURRENT_SOURCE_DIR}/lib/${_nfedge_kernels}/libnfedge_ops.a")

set(_nfedge_sources src/model.c src/nfedge_rt.c src/nfedge_api.c)
if(NFEDGE_WEIGHTS_ARRAY)
  list(APPEND _nfedge_sources weights/nfedge_weights.c)
endif()
add_library(nfedge_model STATIC ${_nfedge_sources})
target_include_directories(nfedge_model PUBLIC include PRIVATE src third_party/tvm-ffi/include)
target_compile_definitions(nfedge_model PRIVATE NFEDGE_LIBRARY
                           NFEDGE_STATIC_BUFFERS=$<BOOL:${NFEDGE_STATIC_BUFFERS}>
                           NFEDGE_RESERVE_IMAGE=$<BOOL:${NFEDGE_RESERVE_IMAGE}>)
target_link_libraries(nfedge_model PUBLIC nfedge_ops m)
target_link_directories(nfedge_model INTERFACE "${CMAKE_CURRENT_SOURCE_DIR}/linker")
"""

_MAKE = """# nfedge model library for a Makefile build (docs/INTEGRATION.md):
#   NFEDGE_FLOAT_ABI := hard        # soft | softfp | hard: what your -mfloat-abi is
#   include path/to/this/folder/nfedge.mk
#   then compile $(NFEDGE_SRCS) with $(NFEDGE_CFLAGS), link with $(NFEDGE_LDFLAGS) ... $(NFEDGE_LIBS)
NFEDGE_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
NFEDGE_FLOAT_ABI ?= soft
NFEDGE_SRCS := $(NFEDGE_DIR)src/model.c $(NFEDGE_DIR)src/nfedge_rt.c $(NFEDGE_DIR)src/nfedge_api.c
NFEDGE_CFLAGS := -DNFEDGE_LIBRARY -I$(NFEDGE_DIR)include -I$(NFEDGE_DIR)src -I$(NFEDGE_DIR)third_party/tvm-ffi/include
NFEDGE_LIBS := $(NFEDGE_DIR)lib/$(if $(filter hard,$(NFEDGE_FLOAT_ABI)),hard,soft)/libnfedge_ops.a -lm
NFEDGE_LDFLAGS := -L$(NFEDGE_DIR)linker
"""

_README = """# nfedge model library

Exported by `nfedge export`. The API is include/nfedge_model.h; how to build it into your firmware, place the
weight image in the undervolted SRAM bank and check the result on target: nfedge's docs/INTEGRATION.md.
Sizes, checksums and flags: nfedge_model.json. third_party/tvm-ffi holds two Apache-2.0 headers (LICENSE, NOTICE).
"""
