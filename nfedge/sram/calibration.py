"""SRAM characterisation: supply voltage -> bit-error rate and energy per access.

A table (TOML, docs/CALIBRATION.md) lists voltages (relative to Vmin), BER (a fraction, not %) and
energy per access (relative to the nominal voltage). Between table points BER is interpolated
linearly in log(BER) (BER spans orders of magnitude; a segment ending at BER 0 is interpolated
linearly in BER), energy linearly. A voltage outside the table is an error, never an extrapolation.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
import tomllib
from pathlib import Path

import numpy as np

from nfedge.errors import NfedgeError

CALIBRATION_FORMAT = "nfedge-sram-calibration"
DEFAULT_CALIBRATION = "sram-14nm"


@dataclasses.dataclass(frozen=True)
class SramCalibration:
    name: str
    source: str
    voltage: tuple[float, ...]  # V/Vmin, strictly increasing
    ber: tuple[float, ...]  # fraction of faulty bit cells, non-increasing with voltage
    energy_per_access: tuple[float, ...]  # relative to nominal_voltage's
    nominal_voltage: float = 1.0

    def __post_init__(self) -> None:
        v, b, e = (np.asarray(x, dtype=float) for x in (self.voltage, self.ber, self.energy_per_access))
        if not (len(v) == len(b) == len(e) >= 2):
            raise NfedgeError(f"calibration {self.name}: voltage, ber and energy_per_access need the same length >= 2")
        if np.any(np.diff(v) <= 0):
            raise NfedgeError(f"calibration {self.name}: voltages must be strictly increasing")
        if np.any((b < 0) | (b > 0.5)) or np.any(np.diff(b) > 0):
            raise NfedgeError(f"calibration {self.name}: BER must lie in [0, 0.5] and not rise with voltage")
        if np.any(e <= 0):
            raise NfedgeError(f"calibration {self.name}: energy per access must be positive")
        if not v[0] <= self.nominal_voltage <= v[-1]:
            raise NfedgeError(f"calibration {self.name}: nominal voltage {self.nominal_voltage} is outside the table")

    def _check(self, voltage: float) -> None:
        lo, hi = self.voltage[0], self.voltage[-1]
        if not (isinstance(voltage, (int, float)) and math.isfinite(voltage) and lo <= voltage <= hi):
            raise NfedgeError(f"voltage {voltage} is outside calibration {self.name!r} ({lo}..{hi} V/Vmin)")

    def ber_at(self, voltage: float) -> float:
        self._check(voltage)
        i = int(np.searchsorted(self.voltage, voltage, side="right")) - 1
        if i >= len(self.voltage) - 1 or self.voltage[i] == voltage:
            return float(self.ber[min(i, len(self.ber) - 1)])
        v0, v1, b0, b1 = self.voltage[i], self.voltage[i + 1], self.ber[i], self.ber[i + 1]
        t = (voltage - v0) / (v1 - v0)
        if b0 > 0 and b1 > 0:
            return float(math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0))))
        return float(b0 + t * (b1 - b0))

    def energy_at(self, voltage: float) -> float:
        """Energy per weight-memory access at `voltage`, relative to the nominal voltage."""
        self._check(voltage)
        e = float(np.interp(voltage, self.voltage, self.energy_per_access))
        return e / float(np.interp(self.nominal_voltage, self.voltage, self.energy_per_access))

    def voltage_for_ber(self, ber: float) -> float:
        """The voltage at which the interpolated BER equals `ber` (inverse of ber_at)."""
        if not min(self.ber) <= ber <= max(self.ber):
            raise NfedgeError(f"BER {ber} is outside calibration {self.name!r} ({min(self.ber)}..{max(self.ber)})")
        lo, hi = self.voltage[0], self.voltage[-1]
        for _ in range(100):  # bisection: ber_at is monotone non-increasing in voltage
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self.ber_at(mid) > ber else (lo, mid)
        return 0.5 * (lo + hi)


def load_calibration(name_or_path: str | Path = DEFAULT_CALIBRATION) -> SramCalibration:
    """A built-in table by name (calibration/<name>.toml) or a user's TOML file by path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise NfedgeError(f"calibration file {p} does not exist")
        text = p.read_text()
    else:
        res = importlib.resources.files("nfedge._data.calibration") / f"{name_or_path}.toml"
        if not res.is_file():
            raise NfedgeError(f"unknown calibration {name_or_path!r}; built-in: {', '.join(list_calibrations())}")
        text = res.read_text()
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise NfedgeError(f"calibration {name_or_path}: not valid TOML ({e})") from None
    if d.get("format") != CALIBRATION_FORMAT or d.get("version") != 1:
        raise NfedgeError(f"calibration {name_or_path}: expected format = {CALIBRATION_FORMAT!r}, version = 1")
    try:
        return SramCalibration(name=str(d.get("name", p.stem)), source=str(d["source"]),
                               voltage=tuple(float(x) for x in d["voltage"]), ber=tuple(float(x) for x in d["ber"]),
                               energy_per_access=tuple(float(x) for x in d["energy_per_access"]),
                               nominal_voltage=float(d.get("nominal_voltage", 1.0)))
    except (KeyError, TypeError, ValueError) as e:
        raise NfedgeError(f"calibration {name_or_path}: missing or bad field ({type(e).__name__}: {e})") from None


def list_calibrations() -> list[str]:
    return sorted(r.name[:-5] for r in importlib.resources.files("nfedge._data.calibration").iterdir()
                  if r.name.endswith(".toml"))
