"""Issue #25 item 7: does a generator trained for the tail (EOPM's perturbed term as CVaR over the N perturbed
models, or their maximum) move the certified answer? Trains ConvT with each objective on a finished main-job run's
base model and image (the run's own EOPM settings: BER 0.01, N = 5, lambda 5, 400 steps of 64, seed 0), then plans
the generators alone (no other protection) with the run's plan settings: 59 search + 59 fresh chips, 95/95, floor
CA - 2, 1,000 validation and 1,000 test images, and the fixed voltages 0.875 and 0.833 V/Vmin.

    .venv/bin/python scripts/tail_objective.py runs/default --out runs/tail        (about 10 min on 2 cores)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from nfedge.analysis.plan import PlanConfig, plan_operating_points
from nfedge.analysis.split import base_training_data, validation_split
from nfedge.data import load_dataset
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_write_json
from nfedge.pipeline import finished_stages
from nfedge.progress import DEFAULT
from nfedge.sram.image import read_image
from nfedge.stages import test_tensors
from nfedge.train.checkpoint import checkpoint_data, load_checkpoint
from nfedge.train.eopm import EOPMConfig, save_generator, train_generator

OBJECTIVES = (("mean", 1.0), ("cvar", 0.4), ("max", 1.0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished `nfedge run` directory (its base and image stages)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=400)
    a = ap.parse_args(argv)
    try:
        _, stages = finished_stages(a.run)
        base_dir, image_dir = stages["base"], stages["image"]
        model, meta = load_checkpoint(base_dir / "base.pt")
        image = read_image(image_dir / "image")
        data = checkpoint_data(meta, base_dir / "base.pt")
        train, _, info = load_dataset(data)
        gens = {}
        for objective, tail in OBJECTIVES:
            cfg = EOPMConfig(generator="ConvT", ber=0.01, n_perturbed=5, lam=5.0, batch_size=64, epochs=1,
                             max_steps=a.steps, seed=0, objective=objective, tail_fraction=tail)
            gen, log = train_generator(cfg, [(model, image)], train, info.channels, info.image_size, progress=DEFAULT)
            save_generator(a.out / f"ConvT-{objective}.pt", gen, "ConvT", info.channels, info.image_size,
                           {"config": cfg.to_dict(), **log})
            gens[f"ConvT-{objective}"] = ("ConvT", gen)
        pcfg = PlanConfig(base="cnn-s", classes=int(meta["num_classes"]), ecc=False, parity=False, msb=(),
                          fewer_bits=(), generator_msb=0, voltages=(0.875, 0.833))
        val, split = validation_split(data, [base_training_data(meta)], 1000, 0)
        r = plan_operating_points(model, image, test_tensors(data, 1000), pcfg, generators=gens, progress=DEFAULT,
                                  validation=val, split_record=split)
        atomic_write_json(a.out / "plan.json", r)
    except NfedgeError as e:
        print(f"tail_objective: error: {e}", file=sys.stderr)
        return 2
    for row in r["options"]:
        print(row["option"], "voltage", row.get("voltage"), "certified", row.get("certified"),
              "clean", round(row["clean_accuracy"], 2))
    for fixed in r.get("fixed_voltages", []):
        print(json.dumps({k: fixed[k] for k in fixed if k != "options"}))
        for o in fixed["options"]:
            print("  ", o["option"], "rank-k acc", o["accuracy_at_rank"], "mean", round(o["mean"], 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
