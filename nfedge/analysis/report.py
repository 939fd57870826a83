"""`nfedge report`: Markdown + PNG plots from a run's results (host evaluation, on-target fault runs).

The report leads with the plan stage's answer when the run has one (nfedge.analysis.plan: per option, the lowest
voltage at which the chip quantile meets the accuracy floor, and the energy saving there), then the sweep.

Plots (each with its numbers in report_data.json, so a reader or a test can check what is drawn):
  plan.png                 achievable energy saving against the accuracy floor, one curve per option (the plan)
  accuracy_vs_voltage.png  PA (mean +- std over chips) vs SRAM voltage, base alone and behind each
                           generator; host simulation as lines, on-target results as markers
  energy_tradeoff.png      energy saving (x) vs perturbed accuracy (y) at one voltage, one point per
                           generator (paper Figure 1b style)
  chip_spread.png          per-chip perturbed accuracy at that voltage (strip plot over chips)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from nfedge.analysis.energy import energy_saving, mac_energy_saving  # noqa: E402
from nfedge.analysis.plan_table import plan_markdown
from nfedge.analysis.plan_plot import write_plot
from nfedge.fileio import atomic_dir, atomic_write_json, atomic_write_text  # noqa: E402
from nfedge.sram.calibration import load_calibration  # noqa: E402

BASE = "base alone"


def report_data(host: dict[str, Any], target: dict[str, Any] | None, focus_voltage: float | None = None,
                more_targets: list[dict[str, Any]] = (), plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The numbers every plot and table shows, in one JSON-serialisable dict. `target` is the on-target fault run
    the tables show; `more_targets` are runs of the same build in other arithmetic modes (instructions compared);
    `plan` is the plan stage's result (nfedge.analysis.plan.plan_operating_points)."""
    cal = load_calibration(host["config"]["calibration"])
    conds = host["conditions"]
    gens = list(host["clean"]["CA_NF"])
    volts = [c["voltage"] for c in conds]
    if focus_voltage is None:  # the voltage closest to 1% BER, the paper's headline point
        focus_voltage = min(volts, key=lambda v: abs(cal.ber_at(v) - 0.01))
    series = {BASE: {"mean": [c["PA"]["mean"] for c in conds], "std": [c["PA"]["std"] for c in conds],
                     "worst": [c["PA"]["worst"] for c in conds]}}
    for g in gens:
        s = [c["generators"][g]["PA_NF"] for c in conds]
        series[g] = {"mean": [x["mean"] for x in s], "std": [x["std"] for x in s], "worst": [x["worst"] for x in s]}
    focus = next(c for c in conds if c["voltage"] == focus_voltage)
    r = cal.energy_at(focus_voltage)
    energy = {}
    for g in gens:
        e = host["energy"][g]
        energy[g] = {"ES": 100 * energy_saving(e["generator_weight_accesses"], e["base_weight_accesses"], r),
                     "MAC_ES": 100 * mac_energy_saving(e["generator_macs"], e["base_macs"], r),
                     "PA_NF": focus["generators"][g]["PA_NF"]["mean"], "params": e["generator_params"]}
    energy[BASE] = {"ES": 100 * (1 - r), "MAC_ES": 100 * (1 - r), "PA_NF": focus["PA"]["mean"], "params": 0}
    spread = {BASE: focus["PA"]["per_chip"], **{g: focus["generators"][g]["PA_NF"]["per_chip"] for g in gens}}
    data = {"voltages": volts, "bers": [c["ber"] for c in conds], "series": series, "focus_voltage": focus_voltage,
            "focus_ber": focus["ber"], "energy_tradeoff": energy, "chip_spread": spread, "clean": host["clean"],
            "samples": host["samples"], "chips": host["config"]["chips"], "target": None, "plan": plan}
    if target:
        data["target"] = target_points(target)
        data["target_modes"] = [{"mode": t.get("mode", "weight-only"),
                                 "instructions_per_inference": t["instructions_per_inference"],
                                 "estimated_seconds_per_inference": t.get("estimated_seconds_per_inference", {}),
                                 "identical_outputs": t["agreement"].get("identical_outputs")}
                                for t in [target, *more_targets]]
    return data


def target_points(target: dict[str, Any]) -> dict[str, Any]:
    """Per voltage: on-target and host accuracy on the same samples, with and without each generator."""
    pts = []
    for row in target["results"]:
        pts.append({"voltage": row["voltage"], "ber": row["ber"], "target_accuracy": row["target_accuracy"],
                    "host_accuracy": row["host_accuracy"], "agreement": row["agreement"]})
    return {"name": target["target"], "mode": target.get("mode", "weight-only"), "samples": target["samples"],
            "chips": target["chips"], "points": pts,
            "instructions_per_inference": target["instructions_per_inference"],
            "estimated_seconds_per_inference": target.get("estimated_seconds_per_inference", {})}


def _colours(data: dict[str, Any]) -> dict[str, str]:
    """One colour per model, the same in every plot: base alone first, then the generators in run order."""
    return {name: f"C{i}" for i, name in enumerate(data["series"])}


def _plot_accuracy(data: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colour = _colours(data)
    for name, s in data["series"].items():
        line = ax.errorbar(data["voltages"], s["mean"], yerr=s["std"], marker="o", capsize=3, label=f"{name} (host)",
                           color=colour[name])
        if data["target"]:
            key = "base" if name == BASE else name
            tv = [(p["voltage"], p["target_accuracy"][key]["mean"]) for p in data["target"]["points"] if key in p["target_accuracy"]]
            if tv:
                ax.scatter(*zip(*tv), marker="x", s=80, color=line[0].get_color(), label=f"{name} (target)", zorder=5)
    ax.set_xlabel("SRAM voltage (V / Vmin)")
    ax.set_ylabel("accuracy under bit errors (%)")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    top = ax.secondary_xaxis("top", functions=(lambda v: v, lambda v: v))
    top.set_xticks(data["voltages"], [f"{b * 100:.2g}%" for b in data["bers"]], fontsize=7)
    top.set_xlabel("bit-error rate", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_energy(data: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    colour = _colours(data)
    for name, e in data["energy_tradeoff"].items():
        ax.scatter(e["ES"], e["PA_NF"], s=60, color=colour.get(name))
        ax.annotate(name, (e["ES"], e["PA_NF"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"energy saving (%) at {data['focus_voltage']} V/Vmin (weight-memory accesses)")
    ax.set_ylabel(f"perturbed accuracy (%) at BER {data['focus_ber'] * 100:.3g}%")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_spread(data: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    names = list(data["chip_spread"])
    colour = _colours(data)
    ax.boxplot([data["chip_spread"][n] for n in names], showfliers=False)
    for i, n in enumerate(names, start=1):
        ys = data["chip_spread"][n]
        ax.scatter([i + 0.08 * ((k % 5) - 2) for k in range(len(ys))], ys, s=14, alpha=0.7, color=colour.get(n))
    ax.set_xticks(range(1, len(names) + 1), names, fontsize=8)
    ax.set_ylabel(f"accuracy per chip (%) at {data['focus_voltage']} V/Vmin")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(data: dict[str, Any]) -> str:
    """The Markdown table `nfedge run` prints at the end: accuracy (mean +- std, worst chip) per voltage."""
    gens = [n for n in data["series"] if n != BASE]
    clean = data["clean"]
    head = f"CA {clean['CA']:.2f}" + "".join(f" | CA(NF {g}) {clean['CA_NF'][g]:.2f}" for g in gens)
    lines = [head, "", "| V/Vmin | BER | PA (base alone) |" + "".join(f" PA(NF {g}) | RP {g} |" for g in gens),
             "|---|---|---|" + "---|---|" * len(gens)]
    for i, v in enumerate(data["voltages"]):
        b = data["series"][BASE]
        row = f"| {v:.3f} | {data['bers'][i] * 100:.3g}% | {b['mean'][i]:.2f} +- {b['std'][i]:.2f} ({b['worst'][i]:.2f}) |"
        for g in gens:
            s = data["series"][g]
            row += f" {s['mean'][i]:.2f} +- {s['std'][i]:.2f} ({s['worst'][i]:.2f}) | {s['mean'][i] - b['mean'][i]:+.2f} |"
        lines.append(row)
    return "\n".join(lines)


def write_report(host: dict[str, Any], target: dict[str, Any] | None, out_dir: str | Path,
                 header: str = "", focus_voltage: float | None = None, more_targets: list[dict[str, Any]] = (),
                 plan: dict[str, Any] | None = None) -> Path:
    """Write REPORT.md, the PNGs (plan.png with a plan), report_data.json and summary.json into out_dir (atomically)."""
    data = report_data(host, target, focus_voltage, more_targets, plan)
    with atomic_dir(out_dir) as tmp:
        if plan and plan.get("curve"):
            write_plot(plan, tmp / "plan.png")
        _plot_accuracy(data, tmp / "accuracy_vs_voltage.png")
        _plot_energy(data, tmp / "energy_tradeoff.png")
        _plot_spread(data, tmp / "chip_spread.png")
        atomic_write_json(tmp / "report_data.json", data)
        atomic_write_json(tmp / "summary.json", {"table": summary_table(data), "focus_voltage": data["focus_voltage"],
                                                 "plan_table": plan_markdown(plan) if plan else None,
                                                 "energy_tradeoff": data["energy_tradeoff"], "target": data["target"]})
        atomic_write_text(tmp / "REPORT.md", _markdown(data, header))
    return Path(out_dir)


def _plan_section(plan: dict[str, Any] | None) -> list[str]:
    """The planner's answer, the report's first section: the certified answer first (plan_table.headline), then per
    option the lowest voltage meeting the floor, its certificate and saving, then the fixed-voltage rankings."""
    if not plan:
        return []
    cfg, c = plan["config"], plan["certification"]
    lines = ["## Operating points: how low the weight SRAM can go at the accuracy floor, certified\n",
             (f"`nfedge plan` (docs/PLANNER.md) answers two questions. Lowest voltage at the floor: for each option, the "
              f"voltage is searched on {plan['images']['search_split']} images with {cfg['chips']} search chips, then "
              f"certified on the test images with {cfg['confirm_chips']} fresh chips: at least "
              f"{1 - cfg['quantile']:.0%} of chips keep the floor with confidence {cfg['confidence']} when at most "
              f"{c['failures_allowed']} fresh chips miss it. Net weight-memory energy saving against the unprotected "
              "model at nominal voltage (Eq. 6; MAC-based Eq. 7)."
              + (" Best protection at a given voltage: the tables at the end rank every option by its certified "
                 "accuracy there." if plan.get("fixed_voltages") else "") + "\n"),
             plan_markdown(plan), ""]
    if plan.get("curve"):
        lines.append(f"![achievable energy saving against the accuracy floor (illustration over "
                     f"{plan['curve']['chips']} search chips, not certified)](plan.png)\n")
    return lines


def _markdown(data: dict[str, Any], header: str) -> str:
    e = data["energy_tradeoff"]
    parts = [f"# nfedge report\n\n{header}\n", *_plan_section(data["plan"]), "## Accuracy against voltage\n",
             f"Host simulation: {data['samples']} test images, {data['chips']} chips per voltage "
             f"(mean +- population std, worst chip in parentheses).\n",
             summary_table(data), "\n![accuracy vs voltage](accuracy_vs_voltage.png)\n",
             f"## Energy at {data['focus_voltage']} V/Vmin (BER {data['focus_ber'] * 100:.3g}%)\n",
             "| | params | ES % (weight accesses) | MAC-ES % | PA(NF) % |", "|---|---|---|---|---|"]
    parts += [f"| {n} | {v['params']:,} | {v['ES']:.1f} | {v['MAC_ES']:.1f} | {v['PA_NF']:.2f} |" for n, v in e.items()]
    parts += ["\nEnergy is a model: weight-memory accesses (SCALE-SIM output-stationary 32x32 closed form) times "
              "energy per access from the calibration table; the generator runs at nominal voltage.\n",
              "![energy trade-off](energy_tradeoff.png)\n", "![chip spread](chip_spread.png)\n"]
    if data["target"]:
        t = data["target"]
        parts += [f"## On target: {t['name']}, {t['mode']} mode ({t['samples']} samples x {t['chips']} chips per voltage)\n",
                  "Integer mode runs int8 activations, int32 accumulators and fixed-point rescaling "
                  "(docs/INTEGER.md) and must equal the host integer reference bit for bit; weight-only mode is the "
                  "paper's float32 layers on the image's codes.\n" if t["mode"] == "integer" else "",
                  "| V/Vmin | BER | model | target acc % | host acc % | identical predictions | max logit diff |",
                  "|---|---|---|---|---|---|---|"]
        for p in t["points"]:
            for k, acc in p["target_accuracy"].items():
                ag = p["agreement"][k]
                parts.append(f"| {p['voltage']:.3f} | {p['ber'] * 100:.3g}% | {k} | {acc['mean']:.2f} | "
                             f"{p['host_accuracy'][k]['mean']:.2f} | {ag['identical_fraction'] * 100:.2f}% | {ag['max_logit_diff']:.2e} |")
        modes = data["target_modes"]
        parts += ["\nInstructions per inference (QEMU -icount, deterministic; emulated targets count instructions, "
                  "not cycles, so the time is an estimate at 1 instruction per cycle at the descriptor's clock):\n",
                  "| part |" + "".join(f" {m['mode']}: instructions | estimated ms |" for m in modes),
                  "|---|" + "---|---|" * len(modes)]
        for k, label in (("generator", "generator G (nominal voltage)"), ("base", "base model"),
                         ("base_nf", "base model on F(x)")):
            if any(m["instructions_per_inference"].get(k) for m in modes):
                cells = []
                for m in modes:
                    v, e = m["instructions_per_inference"].get(k), m["estimated_seconds_per_inference"].get(k)
                    cells.append(f" {v:,} | {f'{1e3 * e:.1f}' if e else '-'} |" if v else " - | - |")
                parts.append(f"| {label} |" + "".join(cells))
        for m in modes:
            ipi = m["instructions_per_inference"]
            if ipi.get("generator_overhead") is not None:
                exact = m["mode"] == "integer" and m["identical_outputs"] is not None  # float logits never are
                parts.append(f"\n{m['mode']}: generator overhead {100 * ipi['generator_overhead']:.1f}% of the base "
                             "model's instructions." + (f" Output integers identical to the host reference: "
                                                        f"{100 * m['identical_outputs']:.1f}%." if exact else ""))
    return "\n".join(parts) + "\n"
