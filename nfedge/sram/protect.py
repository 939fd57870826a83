"""Two more protections of the weight image against undervolted SRAM, beside SECDED (nfedge.sram.ecc):

Parity with zeroing (detect-and-mask, as in Minerva, ISCA 2016): one even-parity bit per 64-bit word of the image's
stored bits (the words of nfedge.sram.ecc: stored bit s -> word s // 64, bit s % 64, the last word zero-padded). Word w
occupies the 65 SRAM cells 65 w .. 65 w + 64 (its 64 data bits, then its parity bit), so the image holds 65/64 of the
plain image's cells. On a read, a word whose 65 bits have odd parity is *detected* and its 64 data bits are zeroed
(8 zero weights at 8 bits: a bounded perturbation, the cheapest thing a reader can substitute); an even number of
wrong bits passes undetected, as in hardware. Per word rather than per code: a per-code parity bit costs b + 1 cells
per b (12.5% at 8 bits, as much as SECDED, which also corrects); per 64-bit word it costs 1.6%.

MSB protection (hybrid 8T/6T SRAM, Srinivasan et al., DATE 2016): the top k bits of every b-bit code sit in cells at
nominal voltage, which never fault; only the low b - k bits of each code are stored in the undervolted array. That
array numbers its cells like nfedge.sram.faults with b - k bits per code (cell s = code s // (b - k), bit s % (b - k)),
so a chip is the same seed and faults nest across voltages exactly as for the plain image. The sign bit (bit b - 1)
is always protected, so a b < 8 code's sign extension never changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from nfedge.errors import NfedgeError
from nfedge.sram.ecc import DATA_BITS, EccWords, decode_image, encode_image, read_through_faults
from nfedge.sram.faults import FAULT_MODELS, CellFaults, InjectConfig, _bit_mask, _popcount
from nfedge.sram.image import WeightImage, with_codes

PARITY_WORD_BITS = DATA_BITS + 1  # 65 cells per 64 data bits
PARITY_CELL_OVERHEAD = PARITY_WORD_BITS / DATA_BITS  # 65/64: cells (and bits read per access) per plain one


@dataclasses.dataclass(frozen=True)
class ParityAudit:
    words: int  # 64-bit data words, each with one parity cell
    cells: int  # 65 per word
    faulty_cells: int
    error_words: int  # read with at least one wrong bit (data or parity)
    detected_words: int  # odd parity: zeroed
    silent_words: int  # wrong data passed on undetected (an even number of wrong bits)
    ber: float
    chip: int
    fault: str
    voltage: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _popcount_parity(data: np.ndarray) -> np.ndarray:
    return (np.bitwise_count(data) & np.uint8(1)).astype(np.uint8)


def apply_parity_faults(data: np.ndarray, faults: CellFaults) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Read 64-bit words stored with even parity through faulty cells (cell 65 w + j: data bit j of word w, j = 64 its
    parity bit) and zero the words whose parity is odd. Returns (data as read then masked, the data as read, the
    detected-word mask, distinct faulty cells)."""
    data = np.asarray(data, dtype=np.uint64)
    read, read_p, faulty = read_through_faults(data, _popcount_parity(data), faults, PARITY_WORD_BITS)
    detected = _popcount_parity(read) != read_p
    out = read.copy()
    out[detected] = 0
    return out, read, detected, faulty


def inject_parity_faults(image: WeightImage, cfg: InjectConfig) -> tuple[WeightImage, ParityAudit]:
    """The image as the base model reads it through per-word parity with zeroing on `cfg`'s chip and voltage."""
    if image.manifest.faults is not None:
        raise NfedgeError("the image already carries faults; protect the clean image")
    if cfg.fault == "map":
        raise NfedgeError("parity takes fault flip or stuck-at (a measured map covers the plain image's cells, not 65/64 of them)")
    m = image.manifest
    clean = encode_image(image.codes, m.bits)
    words = int(clean.data.size)
    faults = FAULT_MODELS.get(cfg.fault)(cfg, words * PARITY_WORD_BITS, m.geometry)
    out, read, detected, faulty = apply_parity_faults(clean.data, faults)
    wrong = (read != clean.data) | detected  # a wrong parity cell alone is an error word too (and detected)
    silent = (out != clean.data) & ~detected
    codes = decode_image(EccWords(out, clean.check, clean.n_codes, clean.bits))
    audit = ParityAudit(words=words, cells=words * PARITY_WORD_BITS, faulty_cells=faulty, error_words=int(wrong.sum()),
                        detected_words=int(detected.sum()), silent_words=int(silent.sum()), ber=faults.ber,
                        chip=cfg.chip, fault=cfg.fault, voltage=cfg.voltage)
    record = {"config": cfg.to_dict(), "protection": "parity-64-zero", "audit": audit.to_dict(),
              "clean_image_sha256": m.image_sha256}
    return with_codes(image, codes, record), audit


def check_msb(bits: int, msb: int) -> None:
    if not (isinstance(msb, int) and 1 <= msb < bits):
        raise NfedgeError(f"MSB protection keeps 1..{bits - 1} of the {bits} bits of a code at nominal voltage, got {msb!r}")


def apply_msb_faults(codes: np.ndarray, bits: int, msb: int, faults: CellFaults) -> tuple[np.ndarray, int, int]:
    """Apply faults drawn over the undervolted array (the low bits - msb bits of each code) to int8 codes; returns
    (new codes, distinct faulty cells, changed stored bits). The top msb bits are never touched."""
    check_msb(bits, msb)
    low = bits - msb
    raw = np.ascontiguousarray(codes, dtype=np.int8).view(np.uint8)
    new = raw.copy()
    masks = []
    for runs, op in ((faults.flip, "flip"), (faults.stuck_one, "one"), (faults.stuck_zero, "zero")):
        if not runs:
            continue
        mask = _bit_mask(runs, low, raw.size)  # cell s -> code s // low, bit s % low: only bits below low
        if op == "flip":
            np.bitwise_xor(new, mask, out=new)
        elif op == "one":
            np.bitwise_or(new, mask, out=new)
        else:
            np.bitwise_and(new, ~mask, out=new)
        masks.append(mask)
    if not masks:
        return np.asarray(codes, dtype=np.int8), 0, 0
    faulty = _popcount(np.bitwise_or.reduce(masks) if len(masks) > 1 else masks[0])
    return new.view(np.int8), faulty, _popcount(new ^ raw)


def inject_msb_faults(image: WeightImage, cfg: InjectConfig, msb: int) -> tuple[WeightImage, dict[str, Any]]:
    """The image with its top `msb` bits per code at nominal voltage and the rest on `cfg`'s chip and voltage."""
    if image.manifest.faults is not None:
        raise NfedgeError("the image already carries faults; protect the clean image")
    if cfg.fault == "map":
        raise NfedgeError("MSB protection takes fault flip or stuck-at (a measured map covers the plain image's cells)")
    m = image.manifest
    check_msb(m.bits, msb)
    cells = m.total_bytes * (m.bits - msb)
    faults = FAULT_MODELS.get(cfg.fault)(cfg, cells, m.geometry)
    codes, faulty, changed = apply_msb_faults(image.codes, m.bits, msb, faults)
    audit = {"msb": msb, "low_voltage_cells": cells, "nominal_cells": m.total_bytes * msb, "faulty_cells": faulty,
             "flipped_bits": changed, "ber": faults.ber, "chip": cfg.chip, "fault": cfg.fault, "voltage": cfg.voltage}
    record = {"config": cfg.to_dict(), "protection": f"msb-{msb}", "audit": audit, "clean_image_sha256": m.image_sha256}
    return with_codes(image, codes, record), audit
