"""Parity with zeroing and MSB protection (nfedge.sram.protect): parity zeroes exactly the detected words, MSB-protected
bits never fault, and both draw their faults from the same chips (seeds) and nest across voltages."""

import numpy as np
import pytest
from conftest import random_image

from nfedge.errors import NfedgeError
from nfedge.sram.ecc import encode_image
from nfedge.sram.faults import CellFaults, InjectConfig, inject_faults
from nfedge.sram.protect import (
    PARITY_WORD_BITS,
    apply_msb_faults,
    apply_parity_faults,
    inject_msb_faults,
    inject_parity_faults,
)


def _runs(*cells):
    return [np.array(sorted(cells), dtype=np.int64)]


def test_parity_zeroes_exactly_the_detected_words():
    data = np.random.default_rng(3).integers(1, 2**63, 10).astype(np.uint64)  # no word is zero to begin with
    w = PARITY_WORD_BITS
    # word 1: one data bit (detected); word 3: two data bits (even: silent); word 5: its parity cell alone
    # (detected, data intact but zeroed); word 7: three bits (detected); word 9: a data bit and its parity (silent)
    faults = CellFaults(_runs(1 * w + 4, 3 * w + 0, 3 * w + 63, 5 * w + 64, 7 * w + 1, 7 * w + 2, 7 * w + 3,
                              9 * w + 10, 9 * w + 64), [], [], 0.0)
    out, read, detected, faulty = apply_parity_faults(data, faults)
    assert faulty == 9
    assert np.flatnonzero(detected).tolist() == [1, 5, 7]
    assert (out[detected] == 0).all()  # exactly the detected words are zeroed ...
    assert (out[~detected] == read[~detected]).all()  # ... every other word passes as read
    assert out[3] != data[3] and out[9] != data[9]  # even numbers of wrong bits pass silently
    assert (out[[0, 2, 4, 6, 8]] == data[[0, 2, 4, 6, 8]]).all()
    # stuck-at: a stuck cell that agrees with the stored bit changes nothing and is not detected
    bit0 = int(data[2]) & 1
    stuck = CellFaults([], _runs(2 * w) if bit0 else [], [] if bit0 else _runs(2 * w), 0.0)
    out2, _, det2, _ = apply_parity_faults(data, stuck)
    assert not det2.any() and (out2 == data).all()


def test_parity_image_cells_chips_and_nesting():
    img = random_image(4000, 8, seed=1)
    cfg = InjectConfig(ber=0.002, chip=7)
    faulty, audit = inject_parity_faults(img, cfg)
    words = -(-4000 * 8 // 64)
    assert audit.words == words and audit.cells == 65 * words
    assert audit.detected_words > 0 and audit.faulty_cells > 0
    codes = faulty.codes.reshape(-1, 8)  # 8 codes of 8 bits per word
    zeroed = np.flatnonzero((codes == 0).all(axis=1))
    assert audit.detected_words <= len(zeroed)
    again, _ = inject_parity_faults(img, cfg)
    assert again.manifest.image_sha256 == faulty.manifest.image_sha256  # a chip is a seed
    lower, la = inject_parity_faults(img, InjectConfig(ber=0.004, chip=7))
    assert la.faulty_cells >= audit.faulty_cells  # faults nest across BERs for one chip
    with pytest.raises(NfedgeError, match="flip or stuck-at"):
        inject_parity_faults(img, InjectConfig(fault="map", fault_map="x.json", voltage=0.9))


@pytest.mark.parametrize("bits, msb", [(8, 1), (8, 2), (4, 1), (6, 3)])
@pytest.mark.parametrize("fault", ["flip", "stuck-at"])
def test_msb_protected_bits_never_fault(bits, msb, fault):
    img = random_image(5000, bits, seed=2)
    faulty, audit = inject_msb_faults(img, InjectConfig(fault=fault, ber=0.5, chip=3), msb)
    clean, got = img.codes.view(np.uint8), faulty.codes.view(np.uint8)
    top = np.uint8((0xFF << (bits - msb)) & 0xFF)  # the protected bits and the sign extension above them
    assert ((clean ^ got) & top == 0).all()
    low = np.uint8((1 << (bits - msb)) - 1)
    assert ((clean ^ got) & low).any() and audit["flipped_bits"] > 0  # the undervolted bits do fault at BER 0.5
    assert audit["low_voltage_cells"] == 5000 * (bits - msb) and audit["nominal_cells"] == 5000 * msb


def test_msb_fault_cells_map_to_low_bits():
    codes = np.zeros(4, dtype=np.int8)
    # 8-bit codes, top 2 protected: 6 undervolted cells per code; cell 6 is code 1 bit 0, cell 23 is code 3 bit 5
    new, faulty, changed = apply_msb_faults(codes, 8, 2, CellFaults(_runs(6, 23), [], [], 0.0))
    assert new.view(np.uint8).tolist() == [0, 1, 0, 32] and faulty == changed == 2
    with pytest.raises(NfedgeError, match="MSB protection keeps"):
        apply_msb_faults(codes, 8, 8, CellFaults([], [], [], 0.0))


def test_msb_faults_nest_and_match_the_plain_chip_where_nothing_is_protected():
    img = random_image(3000, 8, seed=4)
    a, aa = inject_msb_faults(img, InjectConfig(ber=0.001, chip=5), 1)
    b, ba = inject_msb_faults(img, InjectConfig(ber=0.003, chip=5), 1)
    diff_a = (a.codes != img.codes)
    assert ba["faulty_cells"] >= aa["faulty_cells"] and (b.codes != img.codes)[diff_a].all()
    plain, _ = inject_faults(img, InjectConfig(ber=0.001, chip=5))
    assert plain.manifest.image_sha256 != a.manifest.image_sha256  # another layout: other bits in the weak cells
    assert encode_image(img.codes, 8).data.size * 65 == inject_parity_faults(img, InjectConfig(ber=0.0, chip=0))[1].cells
