"""The plan as Markdown (`nfedge plan`'s table, plan.md of `nfedge run`, the report's first section): the certified
answer first, then every option with the numbers behind its certificate, the energy model of each option, and the
fixed-voltage rankings."""

from __future__ import annotations

from typing import Any


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def headline(result: dict[str, Any]) -> list[str]:
    """The certified answer, and the best uncertified search result beside the words "not certified" if it differs."""
    c, rows = result["certification"], {r["option"]: r for r in result["options"]}
    claim = (f"at least {1 - c['quantile']:.0%} of chips keep {result['floor']:.2f}% on the {result['images']['test_images']} "
             f"test images, with confidence {c['confidence']}")
    out = []
    if result["winner"]:
        w = rows[result["winner"]]
        cert = w["certificate"]
        out.append(f"**Certified answer: {w['option']} at {w['voltage']:.4f} V/Vmin saves {_pct(w['energy_saving'])} of "
                   f"weight-memory energy (Eq. 6; MAC-ES {_pct(w['mac_energy_saving'])})**: {claim} "
                   f"({cert['failures']} of {cert['chips']} fresh chips below the floor, at most {cert['failures_allowed']} "
                   f"allowed; rank-{cert['rank']} fresh chip {cert['accuracy_at_rank']:.2f}% +- "
                   f"{cert['standard_error']:.2f} (binomial s.e. of its images)).")
    else:
        out.append(f"**No option is certified** at this floor ({claim} was not shown for any option).")
    if "winner_with_retraining" in result and result["winner_with_retraining"] != result["winner"]:
        w = result["winner_with_retraining"]
        out.append(f"Where the base model may be retrained: **{w}**" + (
            f" at {rows[w]['voltage']:.4f} V/Vmin saves {_pct(rows[w]['energy_saving'])}, certified the same way."
            if w else ": no retrained option is certified either."))
    s = result["searched_winner"]
    if s and s != result["winner"] and not rows[s]["certified"]:
        r = rows[s]
        out.append(f"The search's best, {s} at {r['voltage']:.4f} V/Vmin ({_pct(r['energy_saving'])}), is **not certified**: "
                   f"{r['certificate']['failures']} of {r['certificate']['chips_measured']} fresh chips measured fell "
                   f"below the floor.")
    return out


def plan_markdown(result: dict[str, Any]) -> str:
    """The plan as Markdown (savings in %, accuracies in %)."""
    cfg, c, im = result["config"], result["certification"], result["images"]
    val = im["validation"]
    held = (f" (seed {val['seed']}, held out of the {val['train_set_images']} training images: none trained a model)"
            if val else "")
    split = (f"{im['validation_images']} validation images{held}" if im["search_split"] == "validation"
             else f"the {im['test_images']} test images themselves (no validation split: the search saw the images it is "
                  "judged on)")
    lines = [*headline(result), "",
             (f"Floor {result['floor']:.2f}% on the test images ({result['floor_rule']}, CA {result['clean']['CA']:.2f}%); "
              f"searched on {split} with floor {result['floor_validation']:.2f}% (validation CA "
              f"{result['clean']['CA_validation']:.2f}%) and search chips 0..{cfg['chips'] - 1} (rank {c['search_rank']} of "
              f"{cfg['chips']}); certified on {im['test_images']} test images with fresh chips {cfg['chips']}.."
              f"{cfg['chips'] + cfg['confirm_chips'] - 1}: at most {c['failures_allowed']} of {cfg['confirm_chips']} below "
              f"the floor (rank {c['fresh_rank']}, confidence {c['fresh_confidence']:.3f} that the rank-{c['fresh_rank']} "
              f"chip is at or below the {cfg['quantile']} chip quantile). Fault {cfg['fault']}, voltages "
              f"{result['voltage_range'][0]}..{result['voltage_range'][1]} V/Vmin ({cfg['calibration']}). Per-chip "
              f"binomial s.e. at the floor: {im['standard_error_at_floor']:.2f} points."), "",
             ("| option | V/Vmin | BER | ES (Eq. 6) | MAC-ES (Eq. 7) | search: acc @ rank (validation) | mean | "
              "fresh chips below floor | fresh: acc @ rank (test) | certified |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["options"]:
        if not r["feasible"]:
            where = "at nominal voltage" if r["nominal_only"] else f"at {result['voltage_range'][1]} V/Vmin"
            lines.append(f"| {r['option']} | - | - | - | - | misses the floor {where} (clean {r['clean_accuracy']:.2f}, "
                         f"validation {r['clean_accuracy_validation']:.2f}) | - | - | - | no |")
            continue
        s, ce = r["search"], r["certificate"]
        v = f"{r['voltage']:.4f}" + (" (range bottom)" if r["limited_by_range"] else "")
        fresh = (f"{ce['accuracy_at_rank']:.2f} +- {ce['standard_error']:.2f} ({ce['rank']}/{ce['chips']})"
                 if ce["accuracy_at_rank"] is not None else f"- (stopped after {ce['chips_measured']} chips)")
        lines.append(f"| {r['option']} | {v} | {r['ber']:.3g} | {_pct(r['energy_saving'])} | "
                     f"{_pct(r['mac_energy_saving'])} | {s['accuracy_at_rank']:.2f} ({s['rank']}/{s['chips']}) | "
                     f"{s['mean']:.2f} | {ce['failures']} of {ce['chips_measured']} (<= {ce['failures_allowed']}) | {fresh} | "
                     f"{'**yes**' if r['certified'] else 'not certified'} |")
    lines += ["", f"By MAC-ES (Eq. 7), certified: {result['winner_mac'] or 'none'}", "",
              "Options on one energy model (word-equivalent weight accesses per inference; energy per access relative "
              "to nominal voltage; ES = 1 - f_low r - f_nom - TWMA_G / TWMA_base, docs/PLANNER.md):", "",
              "| option | cells at low V | cells at nominal | accesses at low V | accesses at nominal | energy/access low V |",
              "|---|---|---|---|---|---|"]
    for r in result["options"]:
        acc, e = r.get("accesses"), r.get("energy_per_access")
        lines.append(f"| {r['option']} | {r['cells']['low_voltage']:,} | {r['cells']['nominal']:,} | "
                     + (f"{acc['low_voltage']:,.0f} | {acc['nominal']:,.0f} | {e['low_voltage']:.4f} |" if acc else
                        "- | - | - |"))
    for f in result.get("fixed_voltages") or []:
        lines += ["", f"At fixed {f['voltage']} V/Vmin (BER {f['ber']:.3g}): rank-{c['fresh_rank']} of "
                      f"{cfg['confirm_chips']} fresh chips on the test images (at least {1 - cfg['quantile']:.0%} of chips "
                      f"at or above it, confidence {c['fresh_confidence']:.3f}); best meeting the floor: "
                      f"{f['best_meeting_floor'] or 'none'}"
                      + (f"; with retraining: {f['best_meeting_floor_with_retraining'] or 'none'}"
                         if "best_meeting_floor_with_retraining" in f else ""), "",
                  "| rank | option | certified acc | mean | worst | ES (Eq. 6) | MAC-ES | meets floor |",
                  "|---|---|---|---|---|---|---|---|"]
        for i, r in enumerate(f["options"], 1):
            lines.append(f"| {i} | {r['option']} | {r['accuracy_at_rank']:.2f} +- {r['standard_error']:.2f} | "
                         f"{r['mean']:.2f} | {r['worst']:.2f} | {_pct(r['energy_saving'])} | {_pct(r['mac_energy_saving'])} "
                         f"| {'yes' if r['meets_floor'] else 'no'} |")
    return "\n".join(lines)
