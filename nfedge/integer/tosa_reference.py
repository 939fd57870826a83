"""The TOSA reference model as the third oracle of the integer reference (after the target and onnxruntime).

    model = export_integer_tosa(TosaExportConfig(batch=len(x_q)), prog, "m.tosa", (1, 32, 32), image=faulty)
    outs = run_tosa_reference(model, x_q)            # {"output": int64 [N, K], "front": int64 [N, C, H, W]}
    row = compare_tosa_with_reference(model, prog, x_q, faulty, generator_program)

The reference model is Arm's C++ implementation of the TOSA 1.0 specification, the `tosa_reference_model` program of
the installed `tosa-tools` wheel. It runs as a subprocess: the program path comes from the wheel's own file list
(never from a model or a descriptor), the argument list is fixed (no shell; never a custom-operator library), and
every file it reads or writes lives in a fresh temp folder that is removed afterwards. A graph the specification
refuses (an ERROR_IF or REQUIRE that fails, e.g. an accumulator leaving int32) is a one-line NfedgeError, not a result.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np

from nfedge.errors import NfedgeError
from nfedge.integer.program import Program
from nfedge.integer.reference import image_codes, run_front, run_integer
from nfedge.integer.scheme import INT8_MAX, INT8_MIN
from nfedge.integer.tosa_export import TosaModel
from nfedge.sram.image import WeightImage

TIMEOUT_S = 600.0


def reference_model_binary() -> Path:
    """The reference model program that the tosa-tools wheel installed (bin/tosa_reference_model in its file list)."""
    try:
        dist = metadata.distribution("tosa-tools")
    except metadata.PackageNotFoundError:
        raise NfedgeError("the TOSA reference model needs the tosa-tools package (bash scripts/setup.sh)") from None
    for f in dist.files or []:
        if f.as_posix() == "bin/tosa_reference_model":
            path = Path(dist.locate_file(f)).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    raise NfedgeError("the tosa-tools package has no executable bin/tosa_reference_model (reinstall it)")


def _nchw(v: np.ndarray) -> np.ndarray:
    return v.transpose(0, 3, 1, 2) if v.ndim == 4 else v


def run_tosa_reference(model: TosaModel, x_q: np.ndarray, timeout_s: float = TIMEOUT_S) -> dict[str, np.ndarray]:
    """The exported graph under the TOSA reference model on int8 inputs x_q [N, C, H, W] (N = the graph's batch):
    every graph output as an int64 array, activations back in NCHW."""
    x_q = np.asarray(x_q, dtype=np.int64)
    name, shape = model.input
    if x_q.ndim != 4 or x_q.min(initial=0) < INT8_MIN or x_q.max(initial=0) > INT8_MAX:
        raise NfedgeError("TOSA reference: inputs must be int8 values shaped [N, C, H, W]")
    x = x_q.transpose(0, 2, 3, 1).astype(np.int8)
    if tuple(x.shape) != tuple(shape):
        raise NfedgeError(f"TOSA reference: the graph takes {tuple(shape)} (NHWC), got {tuple(x.shape)}")
    roles = list(model.outputs)
    with tempfile.TemporaryDirectory(prefix="nfedge-tosa-") as tmp:
        d = Path(tmp)
        (d / "model.tosa").write_bytes(Path(model.path).read_bytes())  # the tool reads only inside this folder
        np.save(d / "x.npy", x)
        argv = [str(reference_model_binary()), "--tosa_file", "model.tosa", "--ifm_name", name, "--ifm_file", "x.npy",
                "--ofm_name", ",".join(model.outputs[r][0] for r in roles),
                "--ofm_file", ",".join(f"out{i}.npy" for i in range(len(roles))),
                "--flatbuffer_dir", str(d), "--output_dir", str(d), "--terminate_early"]
        try:
            r = subprocess.run(argv, cwd=d, capture_output=True, text=True, timeout=timeout_s,
                               env={"PATH": "/usr/bin:/bin", "LANG": "C"}, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise NfedgeError(f"TOSA reference: the reference model ran longer than {timeout_s:.0f} s") from None
        files = [d / f"out{i}.npy" for i in range(len(roles))]
        if r.returncode != 0 or not all(f.is_file() for f in files):
            why = [ln.strip() for ln in (r.stdout + r.stderr).splitlines() if "ERROR_IF" in ln or "REQUIRE" in ln
                   or "Graph result" in ln]
            raise NfedgeError(f"TOSA reference: the reference model refused the graph (exit {r.returncode}"
                              + (f": {why[0][:200]}" if why else "") + ")")
        return {role: _nchw(np.load(f, allow_pickle=False).astype(np.int64)) for role, f in zip(roles, files)}


def compare_tosa_with_reference(model: TosaModel, program: Program, x_q: np.ndarray, image: WeightImage | None,
                                generator_program: Program | None = None) -> dict[str, float]:
    """The reference model against nfedge's integer reference (run_integer, run_front) on the same int8 inputs and
    the image the graph was exported with: the fraction of identical output integers ("outputs", and "front" with a
    generator), identical argmax ("predictions") and the largest difference ("max_diff", in output units)."""
    got = run_tosa_reference(model, x_q)
    x_in = run_front(generator_program, x_q) if generator_program is not None else np.asarray(x_q, np.int64)
    ref = run_integer(program, x_in, image_codes(program, image))
    g, r = got["output"].reshape(len(ref), -1), ref.reshape(len(ref), -1)
    row = {"images": len(ref), "outputs": float(np.mean(g == r)),
           "predictions": float(np.mean(g.argmax(1) == r.argmax(1))), "max_diff": int(np.abs(g - r).max(initial=0))}
    if "front" in got:
        row["front"] = float(np.mean(got["front"] == x_in))
    return row
