"""Emulated undervolted SRAM: bit faults in the stored bits of a weight image.

Model (REFERENCE section 6, DESIGN "The memory image"): stored bit s of the image (weight s // b,
bit s % b) lives in SRAM cell s, cells are grouped in banks of rows x cols. A chip is a seed. Every
cell has one uniform draw u, fixed for the chip; the cell is faulty at voltage V iff u < BER(V), so
at a lower voltage a chip only gains faults.

Sampling costs O(faulty cells), never O(bits): each cell's u is represented by the first arrival
time tau ~ Exp(1) of a Poisson process (u = 1 - exp(-tau)), so "u < p" is "tau < -ln(1 - p)". The
time axis is cut into fixed slabs; slab k holds a Poisson number of points per bank at uniform cells
and uniform times, drawn from its own streams seeded by (chip, k). A query draws only the slabs below
-ln(1 - p) (at most twice the faulty cells) and keeps the points earlier than it. Points landing on
the same cell twice are harmless: faults are applied as OR-ed bit masks. Streams are consumed bank
by bank, so a bank's faults do not depend on how many banks the image needs.

Fault kinds (a registry): `flip` (XOR, the paper's text), `stuck-at` (a faulty cell reads 1 with
probability `stuck_at_one`, else 0, decided by a hash of the cell so it never changes with voltage;
it corrupts only bits that differ from the stuck value: about half), and `map` (measured fault maps).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nfedge.config import StageConfig, require
from nfedge.errors import NfedgeError
from nfedge.registry import Registry
from nfedge.sram.calibration import load_calibration
from nfedge.sram.image import SramGeometry, WeightImage, with_codes

MAX_BER = 0.5
# Slab edges on the Poisson time axis tau (= -ln(1 - BER)): quarter-octave steps, so drawing the slab
# that holds tau wastes at most 19% of the points; the first slab covers BER < 2^-16 (1.5e-5).
_SLAB_EDGES = np.concatenate([[0.0], 2.0 ** np.arange(-16.0, 0.01, 0.25)])
FAULT_MAP_FORMAT = "nfedge-fault-map"


@dataclasses.dataclass(frozen=True)
class InjectConfig(StageConfig):
    fault: str = "flip"  # flip | stuck-at | map
    ber: float | None = None  # fraction of faulty cells (0.01 = 1%); or give voltage
    voltage: float | None = None  # V/Vmin, looked up in the calibration table
    chip: int = 0  # chip seed: which cells are weak
    stuck_at_one: float = 0.5  # stuck-at: fraction of faulty cells stuck at 1
    calibration: str = "sram-14nm"  # built-in table name or a TOML path
    fault_map: str | None = None  # map: path of a measured fault map (JSON)

    def validate(self) -> None:
        require(self.fault in FAULT_MODELS, f"unknown fault kind {self.fault!r}; known: {', '.join(FAULT_MODELS.names())}")
        require((self.ber is None) != (self.voltage is None), "give exactly one of --ber and --voltage")
        if self.ber is not None:
            require(isinstance(self.ber, (int, float)) and 0.0 <= self.ber <= MAX_BER,
                    f"BER must be in [0, {MAX_BER}], got {self.ber}")
        require(isinstance(self.chip, int) and self.chip >= 0, f"chip seed must be a non-negative integer, got {self.chip!r}")
        require(0.0 <= self.stuck_at_one <= 1.0, f"stuck_at_one must be in [0, 1], got {self.stuck_at_one}")
        require(self.fault != "map" or self.fault_map is not None, "fault kind 'map' needs a fault map file")
        require(self.fault != "map" or self.voltage is not None, "fault kind 'map' needs --voltage (maps are per voltage)")

    def resolved_ber(self) -> float:
        return float(self.ber) if self.ber is not None else load_calibration(self.calibration).ber_at(self.voltage)


@dataclasses.dataclass(frozen=True)
class FaultAudit:
    stored_bits: int  # SRAM cells holding weight bits
    faulty_cells: int  # distinct faulty cells among them
    flipped_bits: int  # stored bits whose value actually changed
    ber: float  # the BER the cells were drawn at (measured maps: faulty / cells in the map)
    chip: int
    fault: str
    voltage: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CellFaults:
    """Faulty stored-bit indices by effect, each a list of sorted int64 runs (repeats allowed)."""

    flip: list[np.ndarray]
    stuck_one: list[np.ndarray]
    stuck_zero: list[np.ndarray]
    ber: float


FaultModel = Callable[[InjectConfig, int, SramGeometry], CellFaults]
FAULT_MODELS: Registry[FaultModel] = Registry("fault model")
_EMPTY = np.zeros(0, dtype=np.int64)


def _poisson_points(rng: np.random.Generator, rate: float, n_cells: int) -> np.ndarray:
    """Sorted cells (int64, repeats possible) hit by a Poisson process of `rate` points per cell.

    Points are cumulative exponential gaps along the cell line, drawn in chunks that carry the running
    sum, so the points below any cell depend only on the stream: a bank's faults do not depend on
    how large the image is.
    """
    expected = rate * n_cells
    chunk = int(expected + 6.0 * math.sqrt(expected) + 64)
    parts, last = [], 0.0
    while True:
        gaps = rng.standard_exponential(chunk) / rate
        gaps[0] += last
        x = np.cumsum(gaps)
        if x[-1] >= n_cells:
            parts.append(x[: np.searchsorted(x, n_cells)])
            break
        parts.append(x)
        last = float(x[-1])
    return np.concatenate(parts).astype(np.int64)


def sample_faulty_runs(chip: int, ber: float, n_cells: int) -> list[np.ndarray]:
    """Cells (< n_cells) of `chip` with u < ber, as sorted int64 runs (one per time slab)."""
    if not 0.0 <= ber <= MAX_BER:
        raise NfedgeError(f"BER must be in [0, {MAX_BER}], got {ber}")
    if ber == 0.0 or n_cells == 0:
        return []
    tau = -math.log1p(-ber)
    runs = []
    for k in range(len(_SLAB_EDGES) - 1):
        lo, hi = float(_SLAB_EDGES[k]), float(_SLAB_EDGES[k + 1])
        if lo >= tau:
            break
        cells = _poisson_points(np.random.default_rng([chip, k, 0]), hi - lo, n_cells)
        if hi > tau:  # the slab holding tau: keep only the points earlier than tau
            frac = np.random.default_rng([chip, k, 1]).random(cells.size)
            cells = cells[frac < (tau - lo) / (hi - lo)]
        runs.append(cells)
    return runs


def sample_faulty_cells(chip: int, ber: float, n_cells: int) -> np.ndarray:
    """All faulty cells of `chip` at `ber` (int64, unsorted across slabs, repeats possible)."""
    runs = sample_faulty_runs(chip, ber, n_cells)
    return np.concatenate(runs) if runs else _EMPTY


def _cell_uniform(chip: int, cells: np.ndarray) -> np.ndarray:
    """A fixed uniform [0, 1) number per (chip, cell): splitmix64 of the cell index, salted by chip."""
    with np.errstate(over="ignore"):
        z = cells.astype(np.uint64) + np.uint64((chip * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


@FAULT_MODELS.register("flip")
def _flip_faults(cfg: InjectConfig, n_cells: int, geometry: SramGeometry) -> CellFaults:
    ber = cfg.resolved_ber()
    return CellFaults(sample_faulty_runs(cfg.chip, ber, n_cells), [], [], ber)


@FAULT_MODELS.register("stuck-at")
def _stuck_at_faults(cfg: InjectConfig, n_cells: int, geometry: SramGeometry) -> CellFaults:
    ber = cfg.resolved_ber()
    runs = sample_faulty_runs(cfg.chip, ber, n_cells)
    ones = [_cell_uniform(cfg.chip, r) < cfg.stuck_at_one for r in runs]
    return CellFaults([], [r[o] for r, o in zip(runs, ones)], [r[~o] for r, o in zip(runs, ones)], ber)


@FAULT_MODELS.register("map")
def _measured_map_faults(cfg: InjectConfig, n_cells: int, geometry: SramGeometry) -> CellFaults:
    fmap = load_fault_map(cfg.fault_map)
    if fmap["geometry"] != dataclasses.asdict(geometry):
        raise NfedgeError(f"fault map {cfg.fault_map}: geometry {fmap['geometry']} differs from the image's {dataclasses.asdict(geometry)}")
    map_cells = fmap["banks"] * geometry.bank_cells
    if map_cells < n_cells:
        raise NfedgeError(f"fault map {cfg.fault_map} covers {fmap['banks']} bank(s); the image needs {-(-n_cells // geometry.bank_cells)}")
    entry = next((m for m in fmap["maps"] if abs(m["voltage"] - cfg.voltage) < 1e-9), None)
    if entry is None:
        raise NfedgeError(f"fault map {cfg.fault_map} has no map at voltage {cfg.voltage}; it has {[m['voltage'] for m in fmap['maps']]}")
    arrays = {k: np.asarray(entry.get(k, []), dtype=np.int64) for k in ("flip", "stuck_at_1", "stuck_at_0")}
    n_faulty = sum(a.size for a in arrays.values())
    return CellFaults(*([np.sort(a[a < n_cells])] for a in arrays.values()), ber=n_faulty / map_cells)


def load_fault_map(path: str | Path | None) -> dict[str, Any]:
    """Read and validate a measured fault map (format: docs/CALIBRATION.md)."""
    p = Path(str(path))
    if not p.is_file():
        raise NfedgeError(f"fault map {p} does not exist")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise NfedgeError(f"fault map {p}: not valid JSON ({e})") from None
    if d.get("format") != FAULT_MAP_FORMAT or d.get("version") != 1:
        raise NfedgeError(f"fault map {p}: expected format {FAULT_MAP_FORMAT!r}, version 1")
    try:
        geometry = {"rows": int(d["geometry"]["rows"]), "cols": int(d["geometry"]["cols"])}
        banks = int(d["banks"])
        limit = banks * geometry["rows"] * geometry["cols"]
        for m in d["maps"]:
            m["voltage"] = float(m["voltage"])
            for k in ("flip", "stuck_at_1", "stuck_at_0"):
                cells = np.asarray(m.get(k, []), dtype=np.int64)
                if cells.size and (cells.min() < 0 or cells.max() >= limit):
                    raise ValueError(f"{k} cell outside 0..{limit - 1} at voltage {m['voltage']}")
    except (KeyError, TypeError, ValueError) as e:
        raise NfedgeError(f"fault map {p}: malformed ({type(e).__name__}: {e})") from None
    return {"geometry": geometry, "banks": banks, "maps": d["maps"]}


def _bit_mask(runs: list[np.ndarray], bits: int, n_bytes: int) -> np.ndarray:
    """uint8 mask per code byte with the stored bits in `runs` set (cell s = byte s // bits, bit s % bits).

    Each run is sorted, so cells of one byte are adjacent. A fancy-indexed `|=` keeps only the last
    write to a repeated index, so each pass ORs in the first cell of every byte group and the rest
    (a few percent at realistic BERs) go round again: sequential writes, no unbuffered ufunc.at.
    """
    mask = np.zeros(n_bytes, dtype=np.uint8)
    for cells in runs:
        byte, bit = (cells >> 3, cells & 7) if bits == 8 else np.divmod(cells, bits)
        val = np.left_shift(np.uint8(1), bit.astype(np.uint8))
        while byte.size:
            first = np.empty(byte.size, dtype=bool)
            first[0] = True
            np.not_equal(byte[1:], byte[:-1], out=first[1:])
            mask[byte[first]] |= val[first]
            rest = ~first
            byte, val = byte[rest], val[rest]
    return mask


def apply_cell_faults(codes: np.ndarray, bits: int, faults: CellFaults) -> tuple[np.ndarray, int, int]:
    """Apply faults to int8 codes; returns (new codes, distinct faulty cells, changed stored bits)."""
    raw = codes.view(np.uint8)
    new = raw.copy()
    masks = []
    for runs, op in ((faults.flip, np.bitwise_xor), (faults.stuck_one, np.bitwise_or), (faults.stuck_zero, None)):
        if runs:
            mask = _bit_mask(runs, bits, raw.size)
            if op is None:
                np.bitwise_and(new, ~mask, out=new)
            else:
                op(new, mask, out=new)
            masks.append(mask)
    if not masks:
        return codes, 0, 0
    if bits < 8:  # only the low b bits are stored: re-sign-extend bit b-1 into the byte
        sign = np.uint8(1 << (bits - 1))
        wide = ((new & np.uint8((1 << bits) - 1)) ^ sign).astype(np.int16) - np.int16(sign)
        new = wide.astype(np.int8).view(np.uint8)
    faulty = _popcount(masks[0] if len(masks) == 1 else np.bitwise_or.reduce(masks))
    # A flip always changes its bit; a stuck cell only when the stored bit differs from the stuck value.
    changed = faulty if not (faults.stuck_one or faults.stuck_zero) else _popcount((new ^ raw) & np.uint8((1 << bits) - 1))
    return new.view(np.int8), faulty, changed


def _popcount(a: np.ndarray) -> int:
    """Set bits in a uint8 array, 8 bytes at a time."""
    head = a.size - a.size % 8
    return int(np.bitwise_count(a[:head].view(np.uint64)).sum()) + int(np.bitwise_count(a[head:]).sum())


def inject_faults(image: WeightImage, cfg: InjectConfig) -> tuple[WeightImage, FaultAudit]:
    """The image as `cfg`'s chip at `cfg`'s voltage or BER stores it, and what changed."""
    if image.manifest.faults is not None:
        raise NfedgeError("the image already carries faults; inject into the clean image")
    m = image.manifest
    faults = FAULT_MODELS.get(cfg.fault)(cfg, m.stored_bits, m.geometry)
    codes, faulty, changed = apply_cell_faults(image.codes, m.bits, faults)
    audit = FaultAudit(stored_bits=m.stored_bits, faulty_cells=faulty, flipped_bits=changed, ber=faults.ber,
                       chip=cfg.chip, fault=cfg.fault, voltage=cfg.voltage)
    record = {"config": cfg.to_dict(), "audit": audit.to_dict(), "clean_image_sha256": m.image_sha256}
    return with_codes(image, codes, record), audit
