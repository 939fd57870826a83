"""Which faulty images an evaluation runs on: a sweep of voltages (or BERs) x emulated chips, the chip of a
measured fault map at its voltages, and ready faulty images (for example dumped from a real chip).

`evaluate` (host simulation) and `faultrun` (target vs host) share this config, so both take the same three
sources and both record them in their results:

    sweep = FaultSweep(voltages=(0.875, 0.833), chips=10)                  # emulated chips 0..9
    sweep = FaultSweep(voltages=(0.833,), fault="map", fault_map="m.json")  # the measured chip (one)
    sweep = FaultSweep(images=("dump-chip7/",))                            # these exact bytes
A ready image must have the clean image's layout (bits, tensors, offsets, scales, SRAM geometry): it is the
same memory holding other bits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator

from nfedge.config import StageConfig, require
from nfedge.errors import NfedgeError
from nfedge.sram.calibration import load_calibration
from nfedge.sram.faults import FAULT_MODELS, MAX_BER, InjectConfig, inject_faults
from nfedge.sram.image import WeightImage, read_image

MAP_CHIP = "map"  # the chip label of a measured fault map: one physical chip


@dataclasses.dataclass(frozen=True)
class FaultSweep(StageConfig):
    voltages: tuple[float, ...] = ()  # V/Vmin; or give bers
    bers: tuple[float, ...] = ()  # fractions (0.01 = 1%)
    chips: int = 10  # emulated chips 0..chips-1 per voltage; 1 with a fault map (one measured chip)
    fault: str = "flip"  # flip | stuck-at | map
    stuck_at_one: float = 0.5
    calibration: str = "sram-14nm"
    fault_map: str | None = None  # fault "map": the measured fault map (JSON), voltages must be in it
    images: tuple[str, ...] = ()  # ready faulty image directories, evaluated as they are

    def validate(self) -> None:
        require(not (self.voltages and self.bers), "give voltages or BERs (one of the two), not both")
        require(bool(self.voltages or self.bers or self.images),
                "give voltages or BERs (one of the two), or ready faulty images")
        require(isinstance(self.chips, int) and self.chips >= 1, "chips must be at least 1")
        require(self.fault in FAULT_MODELS, f"unknown fault kind {self.fault!r}; known: {', '.join(FAULT_MODELS.names())}")
        if self.fault == "map":
            require(self.fault_map is not None, "fault map: give the measured fault map file (--fault-map)")
            require(not self.bers, "fault map: give the voltages of its maps, not BERs")
            require(self.chips == 1, f"a fault map is one measured chip: chips must be 1, got {self.chips}")
        else:
            require(self.fault_map is None, f"a fault map file goes with fault 'map', not {self.fault!r}")
        for b in self.bers:
            require(0 <= b <= MAX_BER, f"BER must be in [0, {MAX_BER}], got {b}")
        for d in self.images:
            require(isinstance(d, str) and d != "", "ready images must be directory paths")

    def conditions(self) -> list[dict[str, Any]]:
        """The voltage (or BER) conditions of the sweep, without the ready images."""
        cal = load_calibration(self.calibration)
        if self.voltages:
            return [{"voltage": v, "ber": cal.ber_at(v)} for v in self.voltages]
        return [{"voltage": None, "ber": b} for b in self.bers]

    def inject_config(self, cond: dict[str, Any], chip: int) -> InjectConfig:
        return InjectConfig(fault=self.fault, ber=None if cond["voltage"] is not None else cond["ber"],
                            voltage=cond["voltage"], chip=chip, stuck_at_one=self.stuck_at_one,
                            calibration=self.calibration, fault_map=self.fault_map)

    def chip_labels(self) -> list[int | str]:
        return [MAP_CHIP] if self.fault == "map" else list(range(self.chips))

    def read_ready_images(self, clean: WeightImage) -> list[tuple[dict[str, Any], WeightImage]]:
        """(condition, image) per ready image, each checked against the clean image's layout."""
        out = []
        for d in self.images:
            img = read_image(d)
            check_same_layout(clean, img, d)
            rec = (img.manifest.faults or {}).get("audit", {})
            out.append(({"voltage": rec.get("voltage"), "ber": rec.get("ber"), "image": str(d),
                         "image_sha256": img.manifest.image_sha256}, img))
        return out


def check_same_layout(clean: WeightImage, other: WeightImage, where: str | Path) -> None:
    """A one-line error unless `other` is the same memory as `clean` (it may hold other bits)."""
    a, b = clean.manifest, other.manifest
    for what, x, y in (("bits", a.bits, b.bits), ("total_bytes", a.total_bytes, b.total_bytes),
                       ("SRAM geometry", a.geometry, b.geometry), ("tensors", a.tensors, b.tensors)):
        if x != y:
            raise NfedgeError(f"image {where} does not fit this model: its {what} differ from the clean image's")
    if b.faults is not None and b.faults.get("clean_image_sha256") not in (None, a.image_sha256):
        raise NfedgeError(f"image {where} was made from another clean image (its clean_image_sha256 differs)")


def faulty_images(clean: WeightImage, sweep: FaultSweep) -> Iterator[tuple[int, dict[str, Any], int | str, WeightImage]]:
    """(condition index, condition, chip label, faulty image) for every image the sweep names, made one at a
    time (a host evaluation keeps only one faulty image in memory): the sweep's voltages x chips, then each
    ready image as a condition of its own with one chip (its directory)."""
    ready = sweep.read_ready_images(clean)  # checked before any work is done
    conds = sweep.conditions()
    for i, cond in enumerate(conds):
        for chip in sweep.chip_labels():
            cfg = sweep.inject_config(cond, 0 if chip == MAP_CHIP else chip)
            yield i, cond, chip, inject_faults(clean, cfg)[0]
    for j, (cond, img) in enumerate(ready):
        yield len(conds) + j, cond, cond["image"], img


def condition_label(cond: dict[str, Any]) -> str:
    """The key of a condition in result tables: its image, voltage or BER."""
    if cond.get("image"):
        return str(cond["image"])
    return str(cond["voltage"] if cond["voltage"] is not None else cond["ber"])
