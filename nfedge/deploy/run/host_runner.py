"""The host target's runner: a host bundle's Relax VM libraries run in this subprocess with the same file
protocol as the firmware's main.c (input.bin + image.bin in, logits.bin + ticks.bin and a done line out).
Started by nfedge.deploy.run.harness only with trust_bundle_code: loading a bundle's .so runs its native code."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from nfedge.deploy.bundle import load_bundle
from nfedge.errors import NfedgeError


def run_host_bundle(bundle_dir: str, work: str) -> int:
    """Subprocess entry for host bundles: the same file protocol as the firmware's main.c."""
    import tvm
    from tvm import relax

    bundle = load_bundle(bundle_dir, verify=False)
    d = Path(work)
    c, h, w = bundle.input_shape
    k = bundle.num_classes
    image = np.fromfile(d / "image.bin", dtype=np.int8)
    x_all = np.fromfile(d / "input.bin", dtype=np.dtype(bundle.input_dtype)).reshape(-1, c, h, w)
    dev = tvm.cpu()
    vms = {name: relax.VirtualMachine(tvm.runtime.load_module(str(bundle.path / bundle.manifest["entry"][name])), dev)
           for name in ("base", "generator") if name in bundle.manifest["entry"]}
    image_t = tvm.runtime.tensor(image, dev)  # copies into an aligned buffer

    def run(vm, *args):
        t0 = time.perf_counter_ns()
        out = vm["main"](*args)
        out = out[0] if isinstance(out, (list, tuple)) or type(out).__name__ == "Array" else out
        arr = out.numpy()
        return arr, time.perf_counter_ns() - t0

    logits, ticks = [], []
    for i in range(x_all.shape[0]):
        xi = tvm.runtime.tensor(np.ascontiguousarray(x_all[i:i + 1]), dev)
        lb, tb = run(vms["base"], xi, image_t)
        row, trow = [lb.reshape(k)], [tb, 0, 0]
        if "generator" in vms:
            fx, tg = run(vms["generator"], xi)
            ln, tn = run(vms["base"], tvm.runtime.tensor(np.ascontiguousarray(fx), dev), image_t)
            row.append(ln.reshape(k))
            trow[1:] = [tg, tn]
        logits.append(np.concatenate(row))
        ticks.append(trow)
    np.asarray(logits, dtype=np.dtype(bundle.logit_dtype)).tofile(d / "logits.bin")
    np.asarray(ticks, dtype=np.uint64).tofile(d / "ticks.bin")
    print(f"nfedge-done samples={x_all.shape[0]} workspace_peak=0", flush=True)
    return 0


if __name__ == "__main__":  # python -m nfedge.deploy.run.host_runner BUNDLE WORKDIR
    if len(sys.argv) == 3:
        try:
            sys.exit(run_host_bundle(sys.argv[1], sys.argv[2]))
        except NfedgeError as e:
            print(f"nfedge-error: {e}", flush=True)
            sys.exit(2)
    print("usage: python -m nfedge.deploy.run.host_runner BUNDLE WORKDIR", file=sys.stderr)
    sys.exit(64)
