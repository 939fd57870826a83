"""SECDED (72,64) ECC on the weight image: the "just add ECC" alternative to NeuralFuse (DESIGN "Operating points").

Code: a Hsiao odd-weight-column code (Hsiao 1970). Each codeword position j has an 8-bit syndrome column
H[j]: the 64 data positions use the 56 weight-3 columns and 8 weight-5 columns (the rotations of 0b00011111,
which put 26 data bits in every check bit's parity tree: balanced), the 8 check positions the unit vectors. The
syndrome of a read word is H . (read codeword); it is 0 for no error, H[j] for a single error at j (corrected),
and of even weight for any double error (a sum of two odd-weight columns), never 0 and never a column: detected.
Three or more errors may be miscorrected or pass silently, as in real hardware; the audit counts those words.

Layout: stored bit s of the image (weight s // b, bit s % b, as nfedge.sram.faults numbers them) is data bit
s % 64 of word s // 64; the last word is padded with zero bits, which are stored too. Word w occupies the 72
consecutive SRAM cells 72 w .. 72 w + 71: its data bits 0..63, then its check bits 0..7. The ECC image thus
holds 72/64 of the plain image's cells, and at a given BER proportionally more cells are faulty. Faults come
from the registered fault models over those cells, so a chip is the same seed (and faults nest across voltages
for a chip) exactly as for the plain image; the within-row geometry plays no part in flip and stuck-at faults.

A detected-uncorrectable word (DUE) is, by default, zeroed: the decoder knows the word is wrong but not which
bits, and 8 zero weights (b = 8) are a bounded perturbation, whereas the word as read carries at least two wrong
bits that may be sign or high-order bits (a flipped bit 7 turns a stored 3 into -125). `uncorrectable="keep"`
passes the word on as read (a memory controller that only logs the DUE). On a cnn-xs example zeroing let ECC go
to 0.8816 V/Vmin at the floor, keeping only to 0.8934 (docs/PLANNER.md).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from nfedge.errors import NfedgeError
from nfedge.sram.faults import FAULT_MODELS, CellFaults, InjectConfig
from nfedge.sram.image import WeightImage, with_codes

DATA_BITS, CHECK_BITS, WORD_BITS = 64, 8, 72
CELL_OVERHEAD = WORD_BITS / DATA_BITS  # 1.125: cells (and bits read per access) of the ECC image per plain one
UNCORRECTABLE_POLICIES = ("zero", "keep")
_NO_ERROR, _UNCORRECTABLE = -1, -2


def _hsiao_columns() -> np.ndarray:
    weight3 = [sum(1 << i for i in c) for c in itertools.combinations(range(CHECK_BITS), 3)]  # 56 columns
    weight5 = [((0b00011111 << r) | (0b00011111 >> (CHECK_BITS - r))) & 0xFF for r in range(CHECK_BITS)]  # 8
    return np.array(weight3 + weight5 + [1 << i for i in range(CHECK_BITS)], dtype=np.uint8)


H_COLUMNS = _hsiao_columns()  # syndrome of an error at codeword position j (0..63 data, 64..71 check)
# _ROW_MASKS[r]: the data bits that check bit r covers (bit j set iff H[j] has bit r set)
_ROW_MASKS = np.array([sum(1 << j for j in range(DATA_BITS) if H_COLUMNS[j] >> r & 1) for r in range(CHECK_BITS)],
                      dtype=np.uint64)
# syndrome -> codeword position to correct, _NO_ERROR for syndrome 0, or _UNCORRECTABLE
SYNDROME_POSITION = np.full(256, _UNCORRECTABLE, dtype=np.int16)
SYNDROME_POSITION[0] = _NO_ERROR
SYNDROME_POSITION[H_COLUMNS] = np.arange(WORD_BITS, dtype=np.int16)


@dataclasses.dataclass(frozen=True)
class EccWords:
    """Codewords of an image: data (uint64, stored bit s -> word s // 64, bit s % 64) and check bits (uint8)."""

    data: np.ndarray
    check: np.ndarray
    n_codes: int  # weights of the image
    bits: int  # stored bits per weight

    @property
    def cells(self) -> int:
        return int(self.data.size) * WORD_BITS


@dataclasses.dataclass(frozen=True)
class EccAudit:
    words: int  # 72-bit codewords
    cells: int  # SRAM cells holding them (72 per word)
    faulty_cells: int  # distinct faulty cells among them
    error_words: int  # words read with at least one wrong bit (the simulation knows; the decoder does not)
    corrected_words: int  # syndrome matched one column: that bit was flipped back (a miscorrection counts too)
    detected_words: int  # syndrome not 0 and not a column: detected uncorrectable, handled by `uncorrectable`
    silent_words: int  # words whose decoded data still differ from what was written, undetected (>= 3 errors)
    uncorrectable: str
    ber: float
    chip: int
    fault: str
    voltage: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parity_check_bits(data: np.ndarray) -> np.ndarray:
    """The 8 check bits of each 64-bit data word (uint8; bit r = parity of data & row mask r)."""
    data = np.asarray(data, dtype=np.uint64)
    check = np.zeros(data.shape, dtype=np.uint8)
    for r in range(CHECK_BITS):
        check |= (np.bitwise_count(data & _ROW_MASKS[r]) & np.uint8(1)) << np.uint8(r)
    return check


def encode_image(codes: np.ndarray, bits: int) -> EccWords:
    """Group a flat int8 image's stored bits (the low `bits` of each code) into 64-bit words plus check bits."""
    raw = np.ascontiguousarray(codes, dtype=np.int8).view(np.uint8).reshape(-1)
    n = raw.size
    if bits == 8:
        stream = raw
    else:  # pack the b stored bits of each code back to back (stored bit s = code s // b, bit s % b)
        stream = np.packbits(np.unpackbits(raw[:, None], axis=1, bitorder="little")[:, :bits].reshape(-1),
                             bitorder="little")
    words = -(-n * bits // DATA_BITS)
    padded = np.zeros(words * 8, dtype=np.uint8)
    padded[: stream.size] = stream
    data = padded.view("<u8").astype(np.uint64)
    return EccWords(data, parity_check_bits(data), n, bits)


def _or_by_word(word: np.ndarray, vals: np.ndarray, size: int, dtype: type) -> np.ndarray:
    """mask[w] = OR of vals over entries with word == w (word sorted ascending)."""
    mask = np.zeros(size, dtype=dtype)
    if word.size:
        starts = np.flatnonzero(np.concatenate([[True], word[1:] != word[:-1]]))
        mask[word[starts]] = np.bitwise_or.reduceat(vals.astype(dtype), starts)
    return mask


def _cell_masks(runs: list[np.ndarray], words: int, word_bits: int = WORD_BITS) -> tuple[np.ndarray, np.ndarray]:
    """Per-word uint64 data and uint8 check masks of the cells in `runs` (repeats are OR-ed, as in faults.py), word w
    in cells word_bits w .. word_bits w + word_bits - 1 (data bits first; nfedge.sram.protect's parity words: 65)."""
    cells = np.unique(np.concatenate(runs)) if runs else np.zeros(0, dtype=np.int64)
    word, pos = np.divmod(cells, word_bits)
    d, c = pos < DATA_BITS, pos >= DATA_BITS
    dmask = _or_by_word(word[d], np.left_shift(np.uint64(1), pos[d].astype(np.uint64)), words, np.uint64)
    cmask = _or_by_word(word[c], np.left_shift(np.uint8(1), (pos[c] - DATA_BITS).astype(np.uint8)), words, np.uint8)
    return dmask, cmask


def read_through_faults(data: np.ndarray, side: np.ndarray, faults: CellFaults,
                        word_bits: int = WORD_BITS) -> tuple[np.ndarray, np.ndarray, int]:
    """64-bit data words (uint64) and their side cells (uint8 per word: SECDED's check bits, or
    nfedge.sram.protect's parity bit) as faulty cells read them, word w in cells word_bits w .. (data bits first);
    and the number of distinct faulty cells."""
    data, side = data.copy(), side.copy()
    faulty_d = np.zeros(data.size, dtype=np.uint64)
    faulty_s = np.zeros(side.size, dtype=np.uint8)
    for runs, kind in ((faults.flip, "flip"), (faults.stuck_one, "one"), (faults.stuck_zero, "zero")):
        if not runs:
            continue
        dm, sm = _cell_masks(runs, data.size, word_bits)
        if kind == "flip":
            data ^= dm
            side ^= sm
        elif kind == "one":
            data |= dm
            side |= sm
        else:
            data &= ~dm
            side &= ~sm
        faulty_d |= dm
        faulty_s |= sm
    return data, side, int(np.bitwise_count(faulty_d).sum()) + int(np.bitwise_count(faulty_s).sum())


def apply_codeword_faults(words: EccWords, faults: CellFaults) -> tuple[EccWords, int]:
    """The codewords as a faulty SRAM reads them (cell 72 w + j = position j of word w); and the faulty cells."""
    data, check, faulty = read_through_faults(words.data, words.check, faults)
    return EccWords(data, check, words.n_codes, words.bits), faulty


def decode_words(words: EccWords, uncorrectable: str = "zero") -> tuple[EccWords, np.ndarray, np.ndarray]:
    """Syndrome decoding: (decoded words, corrected mask, detected-uncorrectable mask), masks per word."""
    if uncorrectable not in UNCORRECTABLE_POLICIES:
        raise NfedgeError(f"uncorrectable-word policy must be one of {', '.join(UNCORRECTABLE_POLICIES)}, got {uncorrectable!r}")
    syndrome = parity_check_bits(words.data) ^ words.check
    pos = SYNDROME_POSITION[syndrome]
    corrected, detected = pos >= 0, pos == _UNCORRECTABLE
    data, check = words.data.copy(), words.check.copy()
    fix_d = corrected & (pos < DATA_BITS)
    data[fix_d] ^= np.left_shift(np.uint64(1), pos[fix_d].astype(np.uint64))
    fix_c = corrected & (pos >= DATA_BITS)
    check[fix_c] ^= np.left_shift(np.uint8(1), (pos[fix_c] - DATA_BITS).astype(np.uint8))
    if uncorrectable == "zero":
        data[detected] = 0
        check[detected] = 0  # a valid codeword again: the check bits of all-zero data are zero
    return EccWords(data, check, words.n_codes, words.bits), corrected, detected


def decode_image(words: EccWords) -> np.ndarray:
    """The flat int8 codes held in the data bits (b < 8: the b stored bits sign-extended to a byte)."""
    stream = words.data.astype("<u8").view(np.uint8)
    n, bits = words.n_codes, words.bits
    if bits == 8:
        return stream[:n].view(np.int8).copy()
    per_code = np.unpackbits(stream, bitorder="little")[: n * bits].reshape(n, bits)
    low = np.packbits(per_code, axis=1, bitorder="little")[:, 0]  # the b bits, zero-extended
    sign = np.uint8(1 << (bits - 1))
    return ((low ^ sign).astype(np.int16) - np.int16(sign)).astype(np.int8)


def inject_ecc_faults(image: WeightImage, cfg: InjectConfig, uncorrectable: str = "zero") -> tuple[WeightImage, EccAudit]:
    """The image as the base model reads it through SECDED ECC on `cfg`'s chip at `cfg`'s voltage or BER: encode,
    fault the 72-bit codewords (data and check cells) with the registered fault model, decode."""
    if image.manifest.faults is not None:
        raise NfedgeError("the image already carries faults; protect the clean image")
    if cfg.fault == "map":
        raise NfedgeError("ECC takes fault flip or stuck-at (a measured map covers the plain image's cells, not 72/64 of them)")
    m = image.manifest
    clean = encode_image(image.codes, m.bits)
    faults = FAULT_MODELS.get(cfg.fault)(cfg, clean.cells, m.geometry)
    read, faulty = apply_codeword_faults(clean, faults)
    decoded, corrected, detected = decode_words(read, uncorrectable)
    wrong_read = (read.data != clean.data) | (read.check != clean.check)
    silent = (decoded.data != clean.data) & ~detected
    codes = decode_image(decoded)
    audit = EccAudit(words=int(clean.data.size), cells=clean.cells, faulty_cells=faulty,
                     error_words=int(wrong_read.sum()), corrected_words=int(corrected.sum()),
                     detected_words=int(detected.sum()), silent_words=int(silent.sum()), uncorrectable=uncorrectable,
                     ber=faults.ber, chip=cfg.chip, fault=cfg.fault, voltage=cfg.voltage)
    record = {"config": cfg.to_dict(), "ecc": "secded-72-64-hsiao", "audit": audit.to_dict(),
              "clean_image_sha256": m.image_sha256}
    return with_codes(image, codes, record), audit
