"""A bundle is data, not a key to the host (issue #13): what a bundle's author can put in it runs nothing on
the host that the user did not ask for.

The attacker writes every byte of the bundle, hashes included (`_seal` plays that part: it rewrites the
manifest to match whatever files are there). Each refusal is checked for a one-line NfedgeError and for
its effect: the marker file that the hostile part would create does not appear. The escape firmware and
runner are real programs, compiled here with the cross compilers, and a control run shows that each of
them does create its markers when nothing stops it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import cnn_xs_with_bn_stats

from nfedge.deploy.compile.build import BuildConfig, build_for_target
from nfedge.deploy.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, MANIFEST, TARGET_FILE, load_bundle
from nfedge.deploy.run.harness import run_on_target
from nfedge.deploy.targets import descriptor_text, load_target, parse_target
from nfedge.deploy.compile.toolchain import firmware_dir, tvm_ffi_include
from nfedge.errors import NfedgeError
from nfedge.fileio import sha256_file
from nfedge.sram.image import build_image

SHAPE = [1, 4, 4]  # input shape of the hand-made bundles (nothing in them is a real model)
X = np.zeros((1, *SHAPE), np.float32)
IMAGE = bytes(16)


def _seal(d: Path, m: dict | None = None) -> None:
    """What any bundle author can do: hash the files as they are now and match the target table to target.toml."""
    m = m if m is not None else json.loads((d / MANIFEST).read_text())
    m["files"] = {p.relative_to(d).as_posix(): sha256_file(p) for p in sorted(d.rglob("*"))
                  if p.is_file() and p.relative_to(d).as_posix() != MANIFEST}
    m["target"] = json.loads(json.dumps(parse_target((d / TARGET_FILE).read_text(), TARGET_FILE).to_dict()))
    (d / MANIFEST).write_text(json.dumps(m))


def _fake_bundle(d: Path, target: str, run_name: str, run_bytes: bytes, **entry) -> Path:
    """A bundle made by hand, as an attacker would: a descriptor, one program, a sealed manifest."""
    d.mkdir(parents=True)
    (d / TARGET_FILE).write_text(descriptor_text(target)[0])
    (d / run_name).write_bytes(run_bytes)
    _seal(d, {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "entry": {"run": run_name, **entry},
              "io": {"input_shape": SHAPE, "num_classes": 2, "has_generator": False, "image_bytes": len(IMAGE)}})
    return d


def _edit_descriptor(d: Path, old: str, new: str) -> None:
    text = (d / TARGET_FILE).read_text()
    assert old in text
    (d / TARGET_FILE).write_text(text.replace(old, new))
    _seal(d)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def _nfedge(*args):
    return subprocess.run([sys.executable, "-m", "nfedge", *map(str, args)], capture_output=True, text=True)


# --------------------------------------------------------------------- the bundle's own descriptor


@pytest.fixture
def m55_fake(tmp_path):
    return _fake_bundle(tmp_path / "b", "cortex-m55", "firmware.elf", b"\x7fELF not really")


def test_external_descriptor_source_is_not_followed(m55_fake, tmp_path):
    marker = tmp_path / "marker"
    hostile = tmp_path / "hostile.toml"
    hostile.write_text((m55_fake / TARGET_FILE).read_text().replace(
        'command = ["qemu-system-arm"]', f'command = ["sh", "-c", "touch {marker}"]'))
    m = json.loads((m55_fake / MANIFEST).read_text())
    m["target"]["source"] = str(hostile)  # what load_bundle used to open and run
    (m55_fake / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(NfedgeError, match="target table does not match its target.toml") as e:
        run_on_target(m55_fake, IMAGE, X)
    _one_line(e)
    # a bundle of the old format, which named its descriptor outside itself, is refused as a whole
    m["version"] = 1
    (m55_fake / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(NfedgeError, match="format version 1.*rebuild it") as e:
        run_on_target(m55_fake, IMAGE, X)
    _one_line(e)
    assert not marker.exists()


def test_a_bundle_without_its_descriptor_is_refused(m55_fake):
    (m55_fake / TARGET_FILE).unlink()
    m = json.loads((m55_fake / MANIFEST).read_text())
    del m["files"][TARGET_FILE]
    (m55_fake / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(NfedgeError, match="has no target.toml"):
        load_bundle(m55_fake)


@pytest.mark.parametrize("command", [
    '["sh", "-c", "touch MARKER"]',
    '["/bin/sh", "-c", "touch MARKER"]',
    '["touch", "MARKER"]',
    '["qemu-aarch64-static", "-E", "X=1"]',  # a known emulator, but not one for bare-metal targets
])
def test_hostile_emulator_command_runs_nothing(m55_fake, tmp_path, command):
    marker = tmp_path / "marker"
    _edit_descriptor(m55_fake, 'command = ["qemu-system-arm"]', f"command = {command.replace('MARKER', str(marker))}")
    with pytest.raises(NfedgeError, match="is not one nfedge runs|does not run bare-metal targets") as e:
        run_on_target(m55_fake, IMAGE, X)
    _one_line(e)
    assert not marker.exists()


def test_faultrun_cli_refuses_a_hostile_emulator_in_one_line(m55_fake, tmp_path):
    marker = tmp_path / "marker"
    _edit_descriptor(m55_fake, 'command = ["qemu-system-arm"]', f'command = ["sh", "-c", "touch {marker}"]')
    for extra in ([], ["--allow-emulator", shutil.which("true")]):  # allowing another program allows nothing
        r = _nfedge("faultrun", "--bundle", m55_fake, "--voltage", 0.9, "--chips", 1, "--samples", 1, *extra)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "is not one nfedge runs" in lines[0], r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("args", [
    ["-semihosting-config", "enable=on,target=native"],
    ["--semihosting"],
    ["-chardev", "file,id=c,path=MARKER", "-serial", "chardev:c"],
    ["-serial", "file:MARKER"],
    ["-monitor", "unix:MARKER,server,nowait"],
    ["-qmp", "unix:MARKER,server,nowait"],
    ["-gdb", "tcp::1234"],
    ["-parallel", "file:MARKER"],
    ["-drive", "file=MARKER,format=raw,if=none"],
    ["-device", "loader,file=/etc/hostname,addr=0x0"],
    ["-netdev", "user,id=n"],
    ["-virtfs", "local,path=/,mount_tag=h,security_model=none"],
    ["-plugin", "/tmp/x.so"],
    ["-L", "/"],
    ["-D", "MARKER"],
    ["-sandbox", "off"],
    ["-icount", "shift=0,trace=MARKER"],
    ["MARKER"],  # a stray file name: qemu-system would open it as a disk
])
def test_emulator_arguments_that_reach_the_host_are_refused(m55_fake, tmp_path, args):
    marker = tmp_path / "marker"
    listed = json.dumps([a.replace("MARKER", str(marker)) for a in args])
    _edit_descriptor(m55_fake, 'args = ["-icount", "shift=0"]', f"args = {listed}")
    with pytest.raises(NfedgeError, match="emulator argument .* refused") as e:
        run_on_target(m55_fake, IMAGE, X)
    _one_line(e)
    assert not marker.exists()


@pytest.mark.emulator
@pytest.mark.parametrize("args,ok", [(["-L", "/"], False), (["-g", "1234"], False), (["-E", "LD_PRELOAD=/x.so"], False),
                                     (["-L", "/usr/aarch64-linux-gnu"], True), (["-s", "8M"], True)])
def test_user_mode_emulator_arguments(tmp_path, args, ok):
    d = _fake_bundle(tmp_path / "b", "cortex-a72", "runner", b"\x7fELF")
    _edit_descriptor(d, "args = []", f"args = {json.dumps(args)}")
    if ok:  # allowed: the run goes on and fails later, on the fake runner
        with pytest.raises(NfedgeError) as e:
            run_on_target(d, IMAGE, X, timeout_s=30)
        assert "refused" not in str(e.value)
    else:
        with pytest.raises(NfedgeError, match="emulator argument .* refused"):
            run_on_target(d, IMAGE, X)


# --------------------------------------------------------------------- paths in the manifest


_OPEN_SPY = textwrap.dedent("""
    import json, sys
    from nfedge.deploy.bundle import load_bundle
    from nfedge.errors import NfedgeError
    opened = []
    sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
    try:
        load_bundle(sys.argv[1])
        error = None
    except NfedgeError as e:
        error = str(e)
    print(json.dumps({"error": error, "opened": opened}))
""")


def _load_and_watch(bundle: Path) -> dict:
    """load_bundle in a fresh interpreter whose audit hook records every file it opens (real opens, no mock)."""
    r = subprocess.run([sys.executable, "-c", _OPEN_SPY, str(bundle)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case,msg", [("dotdot-file", "not inside the folder"), ("absolute-file", "an absolute path"),
                                      ("dotdot-entry", "not inside the folder"), ("symlink-file", "symbolic link"),
                                      ("symlink-dir", "symbolic link")])
def test_paths_leaving_the_bundle_are_refused_before_anything_is_opened(m55_fake, tmp_path, case, msg):
    outside = tmp_path / "outside.bin"
    outside.write_bytes((m55_fake / "firmware.elf").read_bytes())
    m = json.loads((m55_fake / MANIFEST).read_text())
    if case == "dotdot-file":
        m["files"]["../outside.bin"] = sha256_file(outside)
    elif case == "absolute-file":
        m["files"][str(outside)] = sha256_file(outside)
    elif case == "dotdot-entry":
        m["files"]["../outside.bin"] = sha256_file(outside)
        m["entry"]["run"] = "../outside.bin"
    elif case == "symlink-file":  # the hashes match: the link is the problem
        (m55_fake / "firmware.elf").unlink()
        (m55_fake / "firmware.elf").symlink_to(outside)
    else:
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "weights.bin").write_bytes(outside.read_bytes())
        (m55_fake / "image").symlink_to(tmp_path / "elsewhere")
        m["files"]["image/weights.bin"] = sha256_file(outside)
    (m55_fake / MANIFEST).write_text(json.dumps(m))
    seen = _load_and_watch(m55_fake)
    assert seen["error"] and "\n" not in seen["error"] and msg in seen["error"], seen["error"]
    assert seen["opened"] == [str(m55_fake.resolve() / MANIFEST)], seen["opened"]  # the manifest, nothing else


def test_manifest_of_the_wrong_shape_is_a_one_line_error(m55_fake):
    m = json.loads((m55_fake / MANIFEST).read_text())
    for key, bad, msg in [("io", {"input_shape": "x"}, "input_shape"), ("entry", {}, "entry"), ("files", [], "files")]:
        (m55_fake / MANIFEST).write_text(json.dumps(m | {key: bad}))
        with pytest.raises(NfedgeError, match=msg) as e:
            load_bundle(m55_fake)
        _one_line(e)


# --------------------------------------------------------------------- host bundles are native code


def test_host_bundle_needs_an_explicit_opt_in(tmp_path):
    marker = tmp_path / "marker"
    src = tmp_path / "evil.c"
    src.write_text(f'#include <stdio.h>\n__attribute__((constructor)) static void own(void) {{\n'
                   f'  FILE *f = fopen("{marker}", "w"); if (f) fclose(f);\n}}\n')
    so = tmp_path / "base.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    d = _fake_bundle(tmp_path / "b", "host", "base.so", so.read_bytes(), base="base.so")
    with pytest.raises(NfedgeError, match="host bundle is native code.*trust_bundle_code") as e:
        run_on_target(d, IMAGE, X)
    _one_line(e)
    assert not marker.exists()
    # the opt-in means what it says: the library's code runs (and, not being a TVM module, then fails)
    with pytest.raises(NfedgeError):
        run_on_target(d, IMAGE, X, timeout_s=120, trust_bundle_code=True)
    assert marker.exists()


# --------------------------------------------------------------------- a guest without the host


_AN547_LD = """
MEMORY { ITCM (rx) : ORIGIN = 0x10000000, LENGTH = 0x80000  RAM (rwx) : ORIGIN = 0x31000000, LENGTH = 0x200000 }
SECTIONS { .isr_vector : { KEEP(*(.isr_vector)) } > ITCM  .text : { *(.text*) *(.rodata*) } > ITCM
           .bss (NOLOAD) : { *(.bss*) *(COMMON) } > RAM  .stack (NOLOAD) : { . += 0x1000; __stack_top__ = .; } > RAM }
"""
# Semihosting through BKPT 0xAB: create a file (SYS_OPEN "w", SYS_WRITE), run a host command (SYS_SYSTEM), exit.
_ESCAPE = r"""
#include <stdint.h>
static int semihost(int op, void *arg) {
  register int r0 __asm__("r0") = op;
  register void *r1 __asm__("r1") = arg;
  __asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}
static uint32_t len(const char *s) { uint32_t n = 0; while (s[n]) ++n; return n; }
int escape(void) {
  const char *path = MARKER_FILE, *cmd = MARKER_CMD;
  uint32_t open_args[3] = {(uint32_t)path, 4 /* "w" */, len(path)};
  int fd = semihost(0x01, open_args);
  uint32_t write_args[3] = {(uint32_t)fd, (uint32_t)"owned\n", 6};
  semihost(0x05, write_args);
  uint32_t close_args[1] = {(uint32_t)fd};
  semihost(0x02, close_args);
  uint32_t system_args[2] = {(uint32_t)cmd, len(cmd)};
  semihost(0x12, system_args);
  semihost(0x18, (void *)0x20026u); /* SYS_EXIT, ADP_Stopped_ApplicationExit (AArch32: the reason in r1) */
  return 0;
}
"""
# A standalone firmware: its own vector table, and a fault handler that just spins (a hostile one need not report)
_STANDALONE = r"""
extern uint32_t __stack_top__;
int escape(void);
void Reset_Handler(void) {
#ifdef FLOOD
  *(volatile uint32_t *)0x59303010u = 16; /* BAUDDIV */
  *(volatile uint32_t *)0x59303008u = 1;  /* CTRL: TX enable */
  for (;;) { while (*(volatile uint32_t *)0x59303004u & 1u) {} *(volatile uint32_t *)0x59303000u = 'x'; }
#endif
  escape();
  for (;;) {}
}
void Hang(void) { for (;;) {} }
__attribute__((section(".isr_vector"), used)) void (*const vectors[16])(void) = {
  (void (*)(void))&__stack_top__, Reset_Handler, Hang, Hang, Hang, Hang, Hang, Hang, 0, 0, 0, Hang, Hang, 0, Hang, Hang};
"""


def _arm_gcc(out: Path, sources: dict[str, str], *flags: str) -> Path:
    for name, text in sources.items():
        (out.parent / name).write_text(text)
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m55", "-mthumb", "-O2", "-nostartfiles", *flags,
                    *[str(out.parent / n) for n in sources], "-o", str(out)], check=True, capture_output=True)
    return out


def _escape_firmware(tmp_path: Path, kind: str) -> tuple[Path, list[Path]]:
    markers = [tmp_path / "owned_by_open", tmp_path / "owned_by_system"]
    defs = [f'-DMARKER_FILE="{markers[0]}"', f'-DMARKER_CMD="touch {markers[1]}"']
    (tmp_path / "an547.ld").write_text(_AN547_LD)
    out = tmp_path / f"{kind}.elf"
    if kind == "nfedge-startup":  # nfedge's own startup (fault reporting) with a main() that tries the escape
        (tmp_path / "memory.ld").write_text("MEMORY { BOOT (rx) : ORIGIN = 0x10000000, LENGTH = 0x80000\n"
                                            "CODE (rx) : ORIGIN = 0x38000000, LENGTH = 0x800000\n"
                                            "RAM (rwx) : ORIGIN = 0x31000000, LENGTH = 0x200000 }\n"
                                            "__stack_size__ = 0x8000; __heap_size__ = 0x1000;\n")
        main = "#include <stdint.h>\nint escape(void);\nint main(void) { return escape(); }\n"
        fw = firmware_dir()
        return _arm_gcc(out, {"escape.c": "#include <stdint.h>\n" + _ESCAPE, "main.c": main}, *defs,
                        str(fw / "startup_cm.c"), "-I", str(fw), "-I", tvm_ffi_include(),
                        "-DNFEDGE_UART_ADDR=0x59303000u", "-T", str(fw / "cortex_m.ld"), "-L", str(tmp_path)), markers
    extra = ["-DFLOOD"] if kind == "flood" else []
    return _arm_gcc(out, {"escape.c": "#include <stdint.h>\n" + _ESCAPE, "start.c": "#include <stdint.h>\n" + _STANDALONE},
                    *defs, *extra, "-nostdlib", "-T", str(tmp_path / "an547.ld")), markers


@pytest.mark.emulator
def test_escape_firmware_works_when_semihosting_is_on(tmp_path):
    """Control: what nfedge ran before (semihosting, target=native) lets this firmware write and run on the host."""
    elf, markers = _escape_firmware(tmp_path, "standalone")
    subprocess.run(["qemu-system-arm", "-M", "mps3-an547", "-nographic", "-monitor", "none", "-serial", "none",
                    "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)],
                   check=True, timeout=60, stdin=subprocess.DEVNULL, capture_output=True)
    assert all(m.exists() for m in markers)


@pytest.mark.emulator
@pytest.mark.parametrize("kind,msg", [
    ("standalone", "no result within 5 s"),  # BKPT without semihosting -> HardFault -> its handler spins
    ("nfedge-startup", "exited with code 250: the CPU faulted.*CPU fault"),  # nfedge's handler reports it
    ("flood", "wrote more than .* bytes of output"),  # a UART that never stops is cut off
])
def test_escape_firmware_reaches_nothing_on_the_host(tmp_path, kind, msg):
    elf, markers = _escape_firmware(tmp_path, kind)
    d = _fake_bundle(tmp_path / "b", "cortex-m55", "firmware.elf", elf.read_bytes())
    with pytest.raises(NfedgeError, match=msg) as e:
        run_on_target(d, IMAGE, X, timeout_s=5)
    _one_line(e)
    assert not any(m.exists() for m in markers)


_LINUX_ESCAPE = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(void) {
  FILE *f = fopen(MARKER_FILE, "w");         /* a host path: outside the confinement it does not exist */
  if (f) { fputs("owned\n", f); fclose(f); }
  if (system(MARKER_CMD) != 0) { }            /* no shell inside the confinement */
  symlink(HOST_FILE, "logits.bin");           /* make nfedge read a host file as its output */
  printf("nfedge-done samples=1 workspace_peak=0\n");
  return 0;
}
"""


@pytest.mark.emulator
def test_linux_guest_is_confined(tmp_path):
    markers = [tmp_path / "owned_by_fopen", tmp_path / "owned_by_system"]
    (tmp_path / "escape.c").write_text(_LINUX_ESCAPE)
    runner = tmp_path / "runner"
    subprocess.run(["aarch64-linux-gnu-gcc", "-static", "-O2", f'-DMARKER_FILE="{markers[0]}"',
                    f'-DMARKER_CMD="touch {markers[1]}"', '-DHOST_FILE="/etc/hostname"', str(tmp_path / "escape.c"),
                    "-o", str(runner)], check=True, capture_output=True)
    d = _fake_bundle(tmp_path / "b", "cortex-a72", "runner", runner.read_bytes())
    with pytest.raises(NfedgeError, match="cannot read logits.bin") as e:
        run_on_target(d, IMAGE, X, timeout_s=60)
    _one_line(e)
    assert not any(m.exists() for m in markers)
    # control: unconfined, the same runner does reach the host
    subprocess.run(["qemu-aarch64-static", str(runner)], cwd=tmp_path, check=True, timeout=60, capture_output=True)
    assert markers[0].exists()


# --------------------------------------------------------------------- real bundles


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A real cortex-m55 bundle built from a descriptor file outside the package (then changed, see below)."""
    d = tmp_path_factory.mktemp("sec")
    desc = d / "my-board.toml"
    desc.write_text(Path(load_target("cortex-m55").source).read_text().replace('name = "cortex-m55"', 'name = "my-board"'))
    m = cnn_xs_with_bn_stats(0)
    image = build_image(m, 8)
    b = build_for_target(BuildConfig(mode="weight-only", target=str(desc), bits=8, input_shape=(1, 32, 32)),
                         m, image, None, d / "bundle")
    return b, image, desc


def _x(n=1):
    return np.random.default_rng(0).uniform(-1, 1, (n, 1, 32, 32)).astype(np.float32)


@pytest.mark.emulator
@pytest.mark.slow
def test_bundle_runs_on_its_own_descriptor_copy(built, tmp_path):
    b, image, desc = built
    assert (b.path / TARGET_FILE).read_text() == desc.read_text()
    assert b.manifest["target"]["source"] == TARGET_FILE and TARGET_FILE in b.manifest["files"]
    before = run_on_target(b.path, image, _x(), timeout_s=120)
    marker = tmp_path / "marker"
    original = desc.read_text()
    try:  # the descriptor the bundle was built from changes afterwards: the bundle does not care
        desc.write_text(original.replace('command = ["qemu-system-arm"]', f'command = ["sh", "-c", "touch {marker}"]'))
        after = run_on_target(b.path, image, _x(), timeout_s=120)
    finally:
        desc.write_text(original)
    assert load_bundle(b.path).target.name == "my-board" and not marker.exists()
    np.testing.assert_array_equal(after.logits_base, before.logits_base)
    assert after.instructions_base[0] == before.instructions_base[0]


@pytest.mark.emulator
@pytest.mark.slow
def test_own_emulator_needs_allow_emulator(built, tmp_path):
    b, image, _ = built
    copy = tmp_path / "b"
    shutil.copytree(b.path, copy)
    mine = tmp_path / "my-qemu"  # the user's own emulator (here: a link to the real one)
    mine.symlink_to(shutil.which("qemu-system-arm"))
    _edit_descriptor(copy, 'command = ["qemu-system-arm"]', f'command = ["{mine}"]')
    with pytest.raises(NfedgeError, match="is not one nfedge runs.*--allow-emulator"):
        run_on_target(copy, image, _x(), timeout_s=120)
    res = run_on_target(copy, image, _x(), timeout_s=120, allow_emulator=mine)
    np.testing.assert_array_equal(res.logits_base, run_on_target(b.path, image, _x(), timeout_s=120).logits_base)
    # its arguments are still checked
    _edit_descriptor(copy, 'args = ["-icount", "shift=0"]', 'args = ["-icount", "shift=0", "-semihosting"]')
    with pytest.raises(NfedgeError, match="refused: gives the guest the host's files"):
        run_on_target(copy, image, _x(), allow_emulator=mine)


@pytest.mark.emulator
@pytest.mark.slow
def test_more_samples_than_the_input_region_holds_run_in_passes(built, tmp_path):
    """The inputs go through guest memory: a region smaller than the batch is filled several times."""
    b, image, _ = built
    copy = tmp_path / "b"
    shutil.copytree(b.path, copy)
    # room for 2 samples of 4 KiB after the 64-byte header; firmware built for 16 MiB is told 8256 bytes too
    _edit_descriptor(copy, "length = 0x1000000 }", "length = 0x2040 }")
    x = _x(5)
    small = run_on_target(copy, image, x, timeout_s=120)
    full = run_on_target(b.path, image, x, timeout_s=120)
    np.testing.assert_array_equal(small.logits_base, full.logits_base)
    assert small.stdout.count("nfedge-done") == 1 and "samples=5" in small.stdout
