"""nfedge export (nfedge.deploy.compile.library): the library folder's files, header and metadata; what it refuses.
The consumer firmware that builds and runs it under QEMU is tests/deploy/test_library.py."""

from __future__ import annotations

import json
import re
import subprocess
import zlib

import pytest
from conftest import run_nfedge

from nfedge.deploy.compile.build import BuildConfig, build_bundle
from nfedge.deploy.compile.library import STATUS_CODES, ExportConfig, export_library
from nfedge.errors import NfedgeError

pytestmark = [pytest.mark.emulator, pytest.mark.slow]


@pytest.fixture(scope="module")
def lib_bundle(fr_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("lib") / "bundle"
    build_bundle(BuildConfig(target="cortex-m55", mode="integer", calib_images=64, emit_library=True),
                 fr_bundle / "base" / "base.pt", fr_bundle / "img", fr_bundle / "gen" / "generator.pt", out)
    return out


def test_export_writes_a_folder_that_says_what_it_holds(lib_bundle, tmp_path):
    out = export_library(ExportConfig(), lib_bundle, tmp_path / "lib")
    for rel in ("include/nfedge_model.h", "src/model.c", "src/nfedge_api.c", "src/nfedge_rt.c", "lib/soft/libnfedge_ops.a",
                "lib/hard/libnfedge_ops.a", "linker/nfedge_sections.ld", "third_party/tvm-ffi/LICENSE",
                "third_party/tvm-ffi/include/tvm/ffi/c_api.h", "third_party/tvm-ffi/include/dlpack/dlpack.h",
                "weights/weights.bin", "weights/nfedge_weights.c", "CMakeLists.txt", "nfedge.mk", "nfedge_model.json"):
        assert (out / rel).is_file(), rel
    image = (lib_bundle / "image" / "weights.bin").read_bytes()
    assert (out / "weights" / "weights.bin").read_bytes() == image
    header = (out / "include" / "nfedge_model.h").read_text()
    assert 'extern "C"' in header and "TVMFFI" not in header and "DLTensor" not in header
    assert f"#define NFEDGE_IMAGE_CRC32 0x{zlib.crc32(image):08x}u" in header
    # the macros both headers define are the same tokens (a source including both sees one definition)
    model_h = dict(re.findall(r"^#define (NFEDGE_\w+) (.+)$", (out / "src" / "model.h").read_text(), flags=re.M))
    public = dict(re.findall(r"^#define (NFEDGE_\w+) (\S+)", header, flags=re.M))
    shared = set(model_h) & set(public)
    assert {"NFEDGE_IMAGE_BYTES", "NFEDGE_ARENA_BYTES", "NFEDGE_WORKSPACE_BYTES"} <= shared
    assert all(model_h[k] == public[k] for k in shared)
    assert {k: int(public[k]) for k in STATUS_CODES} == {k: v for k, (v, _) in STATUS_CODES.items()}
    meta = json.loads((out / "nfedge_model.json").read_text())
    assert meta["image"]["bytes"] == len(image) and meta["image"]["crc32"] == f"0x{zlib.crc32(image):08x}"
    assert meta["memory"]["arena_bytes"] == int(public["NFEDGE_ARENA_BYTES"].rstrip("u"))
    assert meta["input"] == {"shape": [1, 32, 32], "dtype": "int8", "scale": pytest.approx(1 / 127)}


def test_the_kernels_differ_by_float_abi_only_in_their_calling_convention(lib_bundle):
    """The hard-float archive passes floats in FPU registers (Tag_ABI_VFP_args), the soft one does not: the reason
    both are shipped (a firmware cannot link kernels of the other convention)."""
    def vfp_args(abi: str) -> bool:
        out = subprocess.run(["arm-none-eabi-readelf", "-A", str(lib_bundle / "library" / abi / "libnfedge_ops.a")],
                             capture_output=True, text=True, check=True).stdout
        return "Tag_ABI_VFP_args: VFP registers" in out

    assert vfp_args("hard") and not vfp_args("soft")


def test_export_refuses_a_bundle_built_without_the_library(fr_bundle, tmp_path):
    with pytest.raises(NfedgeError, match=r"no library kernels .*--emit library"):
        export_library(ExportConfig(), fr_bundle / "bundle", tmp_path / "lib")
    assert not (tmp_path / "lib").exists()
    r = run_nfedge("export", "--bundle", fr_bundle / "bundle", "--out", tmp_path / "lib")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "--emit library" in r.stderr


def test_emit_library_is_refused_for_a_host_target(fr_bundle, tmp_path):
    with pytest.raises(NfedgeError, match="bare-metal"):
        build_bundle(BuildConfig(target="host", emit_library=True), fr_bundle / "base" / "base.pt", fr_bundle / "img",
                     None, tmp_path / "b")


def test_export_records_the_instructions_a_faultrun_of_this_bundle_measured(lib_bundle, fr_bundle, tmp_path):
    for name, bundle in (("mine", lib_bundle), ("other", fr_bundle / "bundle")):
        r = run_nfedge("faultrun", "--bundle", bundle, "--voltage", 1.0, "--chips", 1, "--samples", 2, "--out",
                       tmp_path / f"{name}.json")
        assert r.returncode == 0, r.stderr[-1000:]
    mine = json.loads((tmp_path / "mine.json").read_text())
    out = export_library(ExportConfig(instructions_from=str(tmp_path / "mine.json")), lib_bundle, tmp_path / "lib")
    meta = json.loads((out / "nfedge_model.json").read_text())
    assert meta["instructions_per_inference"] == mine["instructions_per_inference"]
    assert meta["instructions_per_inference"]["base"] > 0
    with pytest.raises(NfedgeError, match="measured another build"):
        export_library(ExportConfig(instructions_from=str(tmp_path / "other.json")), lib_bundle, tmp_path / "lib2")
    assert not (tmp_path / "lib2").exists()
