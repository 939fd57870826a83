"""The planner's plot: achievable energy saving against the accuracy floor, one curve per option (`nfedge plan --plot`,
the plan stage of `nfedge run` and its report)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from nfedge.fileio import atomic_write_bytes


def write_plot(result: dict[str, Any], path: str | Path) -> None:
    """`plot_png` written atomically to `path`."""
    atomic_write_bytes(path, plot_png(result))


def plot_png(result: dict[str, Any]) -> bytes:
    """Achievable energy saving against the accuracy floor, one curve per option (Eq. 6 left, Eq. 7 right), as PNG
    bytes. `result` is plan_operating_points's, computed with curve=True."""
    curve = result["curve"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in ((axes[0], "energy_saving", "ES (Eq. 6, weight accesses)"),
                           (axes[1], "mac_energy_saving", "MAC-ES (Eq. 7, generator MACs)")):
        for label, c in curve["options"].items():
            pts = [(f, 100 * e) for f, e in zip(curve["floors"], c[key]) if e is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=label)
        ax.axvline(result["floor"], color="grey", linestyle=":", linewidth=1)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.invert_xaxis()  # the floor relaxes to the right
        ax.set_xlabel(f"accuracy floor at the rank-{curve['rank']} of {curve['chips']} search chips (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("achievable energy saving (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"CA {result['clean']['CA']:.2f}%, illustration over {curve['chips']} search chips (not certified), "
                 f"fault {result['config']['fault']}, "
                 f"grid {curve['grid_step']} V/Vmin (dotted: the plan's floor)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
