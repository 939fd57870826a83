"""The exported model library in a user's own firmware (examples/consumer, docs/INTEGRATION.md).

`nfedge build --emit library` + `nfedge export` for cortex-m55 and cortex-m4; the exported folder and the consumer
firmware copied to a fresh folder that has never seen nfedge, built there with CMake and arm-none-eabi-gcc for
{M55, M4} x {hard, softfp} and once as C++, and run under qemu-system-arm with the clean and a faulty weight image
loaded at the consumer's own image address. The integers it prints equal the host integer reference bit for bit:
base(x) and base(F(x)), clean and faulty; the API's status codes for deliberate misuses are the documented ones.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import site
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import run_nfedge

from nfedge.data import load_dataset
from nfedge.deploy.bundle import load_bundle
from nfedge.deploy.run.faultrun import _bundle_programs, _host_integers
from nfedge.integer.calibrate import INPUT_SCALE
from nfedge.integer.reference import run_front
from nfedge.integer.scheme import quantize_to_int8
from nfedge.sram.image import read_image
from nfedge.train.checkpoint import checkpoint_data, load_checkpoint
from nfedge.train.eopm import load_generator, save_generator

pytestmark = [pytest.mark.emulator, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CONSUMER = REPO / "examples" / "consumer"
MACHINES = {"cortex-m55": "mps3-an547", "cortex-m4": "mps2-an386"}
# name: (cpu, -mfloat-abi, main as C++, also run on the library's built-in buffers)
BUILDS = {
    "m55-hard": ("cortex-m55", "hard", False, False),
    "m55-softfp": ("cortex-m55", "softfp", False, False),
    "m4-hard": ("cortex-m4", "hard", False, False),
    "m4-softfp": ("cortex-m4", "softfp", False, False),
    "m4-softfp-cxx": ("cortex-m4", "softfp", True, True),
}
SAMPLES = 3
VOLTAGE, CHIP = 0.833, 1
INPUT_MAGIC = 0x504E4943  # "CINP": the consumer's input block (examples/consumer/main.c)
PROBE = np.array([0.0, 1.0, -1.0, 0.5, -0.25, 0.01], dtype=np.float32)  # main.c's quantize_probe
# main.c's misuses -> the status code the API documents for each (include/nfedge_model.h)
MISUSES = {"before_init": 10, "arena_small": 12, "workspace_small": 13, "arena_misaligned": 14,
           "workspace_misaligned": 14, "arena_null": 11, "init": 0, "input_null": 11, "logits_null": 11,
           "image_null": 11, "image_size": 15, "run_image_size": 15, "check_image_size": 15, "check_flipped": 16}
STATUS_NAMES = {"NFEDGE_OK": 0, "NFEDGE_ERR_OPERATOR": 3, "NFEDGE_ERR_WORKSPACE": 4, "NFEDGE_ERR_NOT_INITIALIZED": 10,
                "NFEDGE_ERR_NULL": 11, "NFEDGE_ERR_ARENA_SIZE": 12, "NFEDGE_ERR_WORKSPACE_SIZE": 13,
                "NFEDGE_ERR_ALIGNMENT": 14, "NFEDGE_ERR_IMAGE_SIZE": 15, "NFEDGE_ERR_IMAGE_CRC": 16,
                "NFEDGE_ERR_NO_GENERATOR": 17}


def _clean_env() -> dict[str, str]:
    """The environment of a user's shell that never installed nfedge: no virtual environment on PATH."""
    venv = Path(sys.prefix).resolve()
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not Path(p).resolve().is_relative_to(venv)]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(path)
    return env


def _run(cmd, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=_clean_env())
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _symbol(elf: Path, name: str) -> int:
    out = _run(["arm-none-eabi-nm", elf]).stdout
    addrs = [int(f[0], 16) for f in (line.split() for line in out.splitlines()) if len(f) == 3 and f[2] == name]
    assert len(addrs) == 1, f"{name} in {elf}: {addrs}"
    return addrs[0]


@pytest.fixture(scope="module")
def generator(fr_bundle, tmp_path_factory) -> Path:
    """fr_bundle's ConvT generator with its output BatchNorm scaled up. Trained for two steps from the identity
    initialisation, G(x) stays below 0.003, under half an int8 step (1/254), so F(x) == x in integers and base(F(x))
    would equal base(x): nothing would tell nfedge_run from nfedge_run_base."""
    gen, meta = load_generator(fr_bundle / "gen" / "generator.pt")
    head_bn = gen.head[1]
    head_bn.weight.data.fill_(0.4)
    head_bn.bias.data.fill_(0.05)
    path = tmp_path_factory.mktemp("gen") / "generator.pt"
    save_generator(path, gen, meta["generator"], meta["in_channels"], tuple(meta["input_size"]), meta["meta"])
    return path


@pytest.fixture(scope="module")
def samples(fr_bundle) -> np.ndarray:
    """A few test images of the base model's data set, quantized like the bundle's input (int8 at INPUT_SCALE)."""
    _, meta = load_checkpoint(fr_bundle / "base" / "base.pt")
    data = checkpoint_data(meta, fr_bundle / "base" / "base.pt")
    _, test, _ = load_dataset(dataclasses.replace(data, test_limit=SAMPLES, seed=0))
    x = test.tensors[0][:SAMPLES].numpy()
    return quantize_to_int8(x, INPUT_SCALE).astype(np.int8)


@pytest.fixture(scope="module")
def user(fr_bundle, generator, samples, tmp_path_factory):
    """Per target: the integer library bundle, its export, a faulty image and the host reference; then the export
    and examples/consumer copied to a fresh folder (what a user has: no repository, no Python install)."""
    work = tmp_path_factory.mktemp("nfedge-side")
    home = tmp_path_factory.mktemp("user")
    shutil.copytree(CONSUMER, home / "consumer", ignore=shutil.ignore_patterns("build*"))
    x_file = home / "input.bin"
    x_file.write_bytes(struct.pack("<4I", INPUT_MAGIC, len(samples), samples[0].size, 0) + samples.tobytes())
    targets = {}
    for target in MACHINES:
        bundle, export = work / f"bundle-{target}", work / f"export-{target}"
        r = run_nfedge("build", "--target", target, "--mode", "integer", "--emit", "library", "--calib-images", 64,
                       "--base", fr_bundle / "base" / "base.pt", "--image", fr_bundle / "img", "--generator", generator,
                       "--out", bundle)
        assert r.returncode == 0, r.stderr[-3000:]
        r = run_nfedge("export", "--bundle", bundle, "--out", export)
        assert r.returncode == 0, r.stderr[-3000:]
        faulty = work / f"faulty-{target}"
        r = run_nfedge("inject", "--image", bundle / "image", "--voltage", VOLTAGE, "--chip", CHIP, "--out", faulty)
        assert r.returncode == 0, r.stderr[-3000:]
        lib = home / f"nfedge_model-{target}"
        shutil.copytree(export, lib, symlinks=True)
        assert not [p for p in lib.rglob("*") if p.is_symlink()], "the exported folder holds links"
        programs = _bundle_programs(load_bundle(bundle))
        images = {}
        for name, img_dir in (("clean", bundle / "image"), ("faulty", faulty)):
            img = read_image(img_dir)
            (home / f"{target}-{name}.bin").write_bytes(img.codes.tobytes())
            base, nf = _host_integers(programs, img, samples)
            images[name] = {"file": home / f"{target}-{name}.bin", "base": base, "run": nf}
        assert images["clean"]["file"].read_bytes() == (lib / "weights" / "weights.bin").read_bytes()
        assert images["clean"]["file"].read_bytes() != images["faulty"]["file"].read_bytes(), "no fault at this voltage"
        assert not np.array_equal(images["clean"]["base"], images["faulty"]["base"]), "the faults change no logit"
        fx = run_front(programs["generator"], samples)
        assert (fx != samples).any(), "F(x) == x: the generator changes nothing"
        assert not np.array_equal(images["clean"]["base"], images["clean"]["run"]), "base(F(x)) == base(x)"
        targets[target] = {"lib": lib, "images": images, "meta": json.loads((lib / "nfedge_model.json").read_text()),
                           "front_crc": [zlib.crc32(np.asarray(f, dtype=np.int8).tobytes()) for f in fx]}
    return {"home": home, "input": x_file, "targets": targets}


@pytest.fixture(scope="module")
def builds(user):
    """Each BUILDS configuration configured and built once with CMake in the user's folder."""
    home = user["home"]
    out = {}
    for name, (cpu, abi, cxx, builtin) in BUILDS.items():
        b = home / f"build-{name}"
        _run(["cmake", "-S", home / "consumer", "-B", b, f"-DCONSUMER_CPU={cpu}", f"-DCONSUMER_FLOAT_ABI={abi}",
              f"-DCONSUMER_CXX={'ON' if cxx else 'OFF'}", f"-DCONSUMER_BUILTIN_BUFFERS={'ON' if builtin else 'OFF'}",
              f"-DNFEDGE_DIR={user['targets'][cpu]['lib']}", "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON"], cwd=home)
        _run(["cmake", "--build", b, "-j", "2"], cwd=home)
        out[name] = b
    return out


def _foreign(path: str) -> bool:
    """True for a path into nfedge's repository, its virtual environment or any site-packages."""
    p = Path(path).resolve()
    roots = [REPO, Path(sys.prefix), *map(Path, site.getsitepackages()), Path(site.getusersitepackages())]
    return any(p.is_relative_to(r.resolve()) for r in roots) or "site-packages" in p.parts


def _include_dirs(command: str, cwd: str) -> list[str]:
    args = shlex.split(command)
    dirs = []
    for i, a in enumerate(args):
        for flag in ("-I", "-isystem", "-iquote", "-idirafter", "-include", "--sysroot="):
            if a == flag and i + 1 < len(args):
                dirs.append(args[i + 1])
            elif a.startswith(flag) and len(a) > len(flag):
                dirs.append(a[len(flag):])
    return [d if os.path.isabs(d) else os.path.join(cwd, d) for d in dirs]


def test_the_consumer_builds_from_the_exported_folder_alone(user, builds):
    home = user["home"].resolve()
    for name, b in builds.items():
        commands = json.loads((b / "compile_commands.json").read_text())
        # the library's sources compiled here, with the user's flags
        assert any(c["file"].endswith("nfedge_api.c") for c in commands), name
        cpu, abi, cxx, _ = BUILDS[name]
        main = next(c for c in commands if Path(c["file"]).name in ("main.c", "main.cpp"))
        assert Path(main["file"]).name == ("main.cpp" if cxx else "main.c") and ("g++" in main["command"]) == cxx
        for c in commands:
            assert f"-mcpu={cpu}" in c["command"] and f"-mfloat-abi={abi}" in c["command"], c["command"]
            dirs = _include_dirs(c["command"], c["directory"])
            assert dirs, c["command"]
            bad = [d for d in dirs if _foreign(d) or not Path(d).resolve().is_relative_to(home)]
            assert not bad, f"{name}: {c['file']} includes {bad}"
        link = (b / "CMakeFiles" / "consumer.dir" / "link.txt").read_text()
        paths = re.findall(r"(/[^\s\"']+)", link)
        assert not [p for p in paths if _foreign(p)], f"{name}: the link line reaches into nfedge: {link}"
        assert f"nfedge_model-{cpu}/lib/{'hard' if abi == 'hard' else 'soft'}/libnfedge_ops.a" in link, link


def _run_consumer(user, build: Path, cpu: str, image: Path) -> list[str]:
    elf = build / "consumer.elf"
    cmd = ["qemu-system-arm", "-M", MACHINES[cpu], "-nographic", "-monitor", "none", "-no-reboot", "-icount", "shift=0",
           "-kernel", elf,
           "-device", f"loader,file={image},addr=0x{_symbol(elf, 'nfedge_image'):08x}",
           "-device", f"loader,file={user['input']},addr=0x{_symbol(elf, 'consumer_input'):08x}"]
    r = _run(cmd, timeout=120)
    lines = [line.strip() for line in r.stdout.splitlines() if line.strip()]
    assert lines and lines[-1] == "consumer: exit 0", r.stdout[-3000:] + r.stderr[-2000:]
    return lines


@pytest.mark.parametrize("image", ["clean", "faulty"])
@pytest.mark.parametrize("name", list(BUILDS))
def test_the_consumer_prints_the_host_integers(user, builds, name, image):
    cpu, abi, cxx, builtin = BUILDS[name]
    t = user["targets"][cpu]
    ref = t["images"][image]
    lines = _run_consumer(user, builds[name], cpu, ref["file"])
    assert lines[0] == f"consumer: cpu={cpu} float-abi={abi} lang={'c++' if cxx else 'c'}"

    # the header's figures are the export's nfedge_model.json
    model = dict(zip(*[iter(lines[1].split()[1:])] * 2))
    meta = t["meta"]
    assert model == {"classes": "10", "generator": "1", "integer": "1", "image_bytes": str(meta["image"]["bytes"]),
                     "image_crc32": meta["image"]["crc32"], "arena_bytes": str(meta["memory"]["arena_bytes"]),
                     "workspace_bytes": str(meta["memory"]["workspace_bytes"])}
    assert meta["status_codes"] == STATUS_NAMES

    status = {f[1]: int(f[2]) for f in (line.split() for line in lines) if f[0] == "status"}
    assert {k: status[k] for k in MISUSES} == MISUSES
    assert status["check_image"] == (0 if image == "clean" else 16)  # the CRC sees the undervolted bank's flips

    quant = [int(v) for v in next(line for line in lines if line.startswith("quantize ")).split()[1:]]
    assert quant == [0, *quantize_to_int8(PROBE.astype(np.float64), INPUT_SCALE).tolist()]

    got = {(int(f[1]), f[2]): f[3:] for f in (line.split() for line in lines) if f[0] == "sample"}
    assert f"samples {SAMPLES}" in lines
    for i in range(SAMPLES):
        assert [int(v) for v in got[i, "base"]] == ref["base"][i].tolist(), (i, "base(x)")
        assert [int(v) for v in got[i, "run"]] == ref["run"][i].tolist(), (i, "base(F(x))")
        assert int(got[i, "front_crc"][0], 16) == t["front_crc"][i], (i, "F(x)")
    if builtin:  # nfedge_init(NULL, 0, NULL, 0): the library's own buffers give the same integers
        assert status["init_builtin"] == 0 and status["run_base_builtin"] == 0
        assert [int(v) for v in got[0, "builtin"]] == ref["base"][0].tolist()
    else:
        assert "init_builtin" not in status
