"""Issue #25 item 3: the robustly retrained bases of a finished `nfedge run`, trained exactly as its base model
(the run's resolved train-base config: model, data and its training subset, bits, epochs, seed) with `robust` set:
clip (weights clamped to [-clip, clip]) and randbet (clip plus random bit error training at --robust-ber).
Writes <out>/<method>/base.pt; an existing checkpoint is kept (an interrupted run resumes).

    .venv/bin/python scripts/robust_bases.py runs/default --out runs/robust [--methods clip randbet]
        [--clip 0.1] [--robust-ber 0.01]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from nfedge.errors import NfedgeError
from nfedge.pipeline import finished_stages
from nfedge.progress import DEFAULT
from nfedge.train.base import TrainBaseConfig, train_base
from nfedge.train.checkpoint import load_checkpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished `nfedge run` directory (its base stage)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--methods", nargs="+", default=["clip", "randbet"])
    ap.add_argument("--clip", type=float, default=TrainBaseConfig.clip)
    ap.add_argument("--robust-ber", type=float, default=TrainBaseConfig.robust_ber)
    a = ap.parse_args(argv)
    try:
        _, stages = finished_stages(a.run)
        _, meta = load_checkpoint(stages["base"] / "base.pt")
        base_cfg = TrainBaseConfig.from_dict(meta["meta"]["config"])
        for method in a.methods:
            path = a.out / method / "base.pt"
            if path.is_file():
                DEFAULT.info(f"robust_bases: {path} exists, kept")
                continue
            cfg = dataclasses.replace(base_cfg, robust=method, clip=a.clip, robust_ber=a.robust_ber)
            start = time.time()
            train_base(cfg, a.out / method)
            DEFAULT.info(f"robust_bases: {method} trained in {time.time() - start:.0f} s")
    except NfedgeError as e:
        print(f"robust_bases: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
