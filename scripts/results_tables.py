"""Markdown tables for docs/RESULTS.md from the files scripts/results_fmnist.sh writes.

    .venv/bin/python scripts/results_tables.py [runs/results]

For each fault model: CA and CA(NF); per voltage PA, PA(NF) and RP (mean +- population std, worst chip);
then the bar of issue #3 per generator and voltage: recovered fraction (PA(NF) - PA) / (CA - PA), CA(NF) - CA,
and std(NF) / std(unprotected); then MACs, weight accesses, ES and MAC-ES per generator.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def stat(s: dict) -> str:
    return f"{s['mean']:.2f} +- {s['std']:.2f} ({s['worst']:.2f})"


def accuracy_tables(r: dict, fault: str) -> list[str]:
    ca, ca_nf = r["clean"]["CA"], r["clean"]["CA_NF"]
    gens = list(ca_nf)
    out = [f"### {fault} faults ({r['samples']} test images, {r['config']['chips']} chips)", "",
           f"CA {ca:.2f} | " + " | ".join(f"CA(NF {g}) {v:.2f}" for g, v in ca_nf.items()), "",
           "| V/Vmin | BER | PA | " + " | ".join(f"PA(NF {g}) | RP {g}" for g in gens) + " |",
           "|---|---|---|" + "---|---|" * len(gens)]
    for c in r["conditions"]:
        cells = [f"{stat(c['generators'][g]['PA_NF'])} | {c['generators'][g]['RP']['mean']:+.2f}" for g in gens]
        out.append(f"| {c['voltage']:.3f} | {100 * c['ber']:.3g}% | {stat(c['PA'])} | " + " | ".join(cells) + " |")
    out += ["", "Against the bar (recovered >= 0.80, CA(NF) - CA >= -2, std ratio <= 0.5; loss = CA - PA):", "",
            "| V/Vmin | loss (points) | generator | recovered | CA(NF) - CA | std ratio | bar |", "|---|---|---|---|---|---|---|"]
    for c in r["conditions"]:
        loss = ca - c["PA"]["mean"]
        for g in gens:
            s = c["generators"][g]["PA_NF"]
            rec = (s["mean"] - c["PA"]["mean"]) / loss if loss > 0 else float("nan")
            ratio = s["std"] / c["PA"]["std"] if c["PA"]["std"] > 0 else float("nan")
            ok = loss >= 15 and rec >= 0.8 and ca_nf[g] - ca >= -2 and ratio <= 0.5
            out.append(f"| {c['voltage']:.3f} | {loss:.2f} | {g} | {rec:.2f} | {ca_nf[g] - ca:+.2f} | {ratio:.2f} | "
                       f"{'met' if ok else 'not met'} |")
    return out + [""]


def energy_table(root: Path) -> list[str]:
    files = sorted(root.glob("energy-*.json"))
    out = ["| generator | V/Vmin | BER | params | MACs | weight accesses | ES % | MAC-ES % |", "|---|---|---|---|---|---|---|---|"]
    for f in files:
        e = json.loads(f.read_text())
        out.append(f"| {e['generator']} | {e['voltage']:.3f} | {100 * e['ber']:.3g}% | {e['generator_params']:,} | "
                   f"{e['generator_macs']:,} | {e['generator_weight_accesses']:,} | {100 * e['energy_saving']:.1f} | "
                   f"{100 * e['mac_energy_saving']:.1f} |")
    return out


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/results")
    lines: list[str] = []
    for f in sorted(root.glob("evaluate-*.json")):
        r = json.loads(f.read_text())
        lines += accuracy_tables(r, f"{f.stem}: {r['config']['fault']}")
    lines += energy_table(root)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
