import json
import math

import numpy as np
import pytest
from conftest import random_image

from nfedge.errors import NfedgeError
from nfedge.sram.faults import InjectConfig, inject_faults, sample_faulty_cells
from nfedge.sram.image import SramGeometry


def _within_binomial(count: int, n: int, p: float, z: float = 5.0) -> bool:
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("ber", [1e-4, 1e-3, 0.01, 0.05, 0.2])
@pytest.mark.parametrize("bits", [8, 4])
def test_flip_statistics(ber, bits):
    img = random_image(200_000, bits, seed=1)
    faulty, audit = inject_faults(img, InjectConfig(fault="flip", ber=ber, chip=7))
    n = audit.stored_bits
    assert n == 200_000 * bits
    assert _within_binomial(audit.faulty_cells, n, ber), (audit, n * ber)
    assert audit.flipped_bits == audit.faulty_cells  # a flip always changes its bit
    # the audit is true: the stored bits differ in exactly flipped_bits places
    mask = (1 << bits) - 1
    diff = (faulty.codes.view(np.uint8) ^ img.codes.view(np.uint8)) & mask
    assert int(np.unpackbits(diff).sum()) == audit.flipped_bits


@pytest.mark.parametrize("ber", [1e-3, 0.01, 0.05])
@pytest.mark.parametrize("split", [0.5, 0.8])
def test_stuck_at_statistics(ber, split):
    img = random_image(200_000, 8, seed=2)
    _, audit = inject_faults(img, InjectConfig(fault="stuck-at", ber=ber, chip=3, stuck_at_one=split))
    assert _within_binomial(audit.faulty_cells, audit.stored_bits, ber)
    # the stored bit differs from the stuck value about half the time (random data bits)
    assert _within_binomial(audit.flipped_bits, audit.faulty_cells, 0.5), audit


def test_stuck_at_polarity_split():
    img = random_image(100_000, 8, seed=3)
    zeros = random_image(100_000, 8, seed=3)
    zeros = type(zeros)(np.zeros_like(zeros.codes), zeros.manifest)
    # all-zero codes: only stuck-at-1 cells change a bit, so changed/faulty estimates the split
    _, audit = inject_faults(zeros, InjectConfig(fault="stuck-at", ber=0.02, chip=5, stuck_at_one=0.8))
    assert _within_binomial(audit.flipped_bits, audit.faulty_cells, 0.8)


def test_nesting_across_voltages():
    """For one chip, the faulty cells at a higher BER (lower voltage) include those at a lower BER."""
    n = 3_000_000
    prev = set()
    for ber in [1e-5, 1e-4, 1.2e-3, 0.011, 0.05, 0.2]:
        cells = set(sample_faulty_cells(11, ber, n).tolist())
        assert prev <= cells
        prev = cells


def test_nesting_through_voltages_in_images():
    img = random_image(50_000, 8, seed=4)
    changed = []
    for v in [0.958, 0.917, 0.875, 0.833, 0.792]:
        faulty, _ = inject_faults(img, InjectConfig(fault="flip", voltage=v, chip=2))
        changed.append((faulty.codes.view(np.uint8) ^ img.codes.view(np.uint8)))
    for hi, lo in zip(changed, changed[1:]):
        assert not np.any(hi & ~lo)  # every bit flipped at the higher voltage is flipped at the lower one


def test_chips_differ_and_seeds_repeat():
    img = random_image(100_000, 8)
    a, _ = inject_faults(img, InjectConfig(ber=0.01, chip=1))
    b, _ = inject_faults(img, InjectConfig(ber=0.01, chip=2))
    a2, _ = inject_faults(img, InjectConfig(ber=0.01, chip=1))
    assert a.codes.tobytes() != b.codes.tobytes()
    assert a.codes.tobytes() == a2.codes.tobytes()
    assert a.manifest.image_sha256 == a2.manifest.image_sha256 != b.manifest.image_sha256


def test_bank_faults_do_not_depend_on_image_size():
    """A chip's faulty cells in its first banks are the same whatever the image's size."""
    small = set(sample_faulty_cells(9, 0.01, 1_500_000).tolist())
    large = {c for c in sample_faulty_cells(9, 0.01, 4_000_000).tolist() if c < 1_500_000}
    assert small == large


@pytest.mark.parametrize("bits", [2, 3, 5, 7])
def test_low_bit_faults_touch_only_stored_bits(bits):
    img = random_image(20_000, bits, seed=5)
    faulty, audit = inject_faults(img, InjectConfig(ber=0.1, chip=4))
    codes = faulty.codes.astype(np.int16)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    assert codes.min() >= lo and codes.max() <= hi  # sign-extended b-bit values only
    assert codes.min() == lo  # the most negative pattern is reachable (no clamp: hardware reads the bits)
    assert audit.stored_bits == 20_000 * bits


def test_zero_ber_changes_nothing():
    img = random_image(10_000, 8)
    faulty, audit = inject_faults(img, InjectConfig(ber=0.0, chip=1))
    assert audit.faulty_cells == 0 and faulty.codes.tobytes() == img.codes.tobytes()


@pytest.mark.parametrize("kw, match", [
    ({"ber": 0.6}, "BER must be in"), ({"ber": -0.1}, "BER must be in"), ({}, "exactly one"),
    ({"ber": 0.1, "voltage": 0.9}, "exactly one"), ({"ber": 0.1, "fault": "melt"}, "unknown fault"),
    ({"ber": 0.1, "chip": -1}, "chip seed"), ({"voltage": 0.9, "fault": "map"}, "fault map"),
])
def test_bad_config(kw, match):
    with pytest.raises(NfedgeError, match=match):
        InjectConfig(**kw)


def test_voltage_outside_table():
    with pytest.raises(NfedgeError, match="outside calibration"):
        inject_faults(random_image(100, 8), InjectConfig(voltage=0.6, chip=1))


def test_faulty_image_cannot_be_injected_again():
    faulty, _ = inject_faults(random_image(100, 8), InjectConfig(ber=0.1, chip=1))
    with pytest.raises(NfedgeError, match="already carries faults"):
        inject_faults(faulty, InjectConfig(ber=0.1, chip=1))


def _fault_map(tmp_path, maps, banks=1, geometry=None):
    p = tmp_path / "chip.json"
    p.write_text(json.dumps({"format": "nfedge-fault-map", "version": 1, "banks": banks,
                             "geometry": geometry or {"rows": 8192, "cols": 128}, "maps": maps}))
    return str(p)


def test_measured_fault_map(tmp_path):
    img = random_image(1000, 8, seed=6)
    codes = img.codes.view(np.uint8)
    # cell 8*i + j = bit j of code i
    path = _fault_map(tmp_path, [{"voltage": 0.8, "flip": [0, 9], "stuck_at_1": [16 + 7], "stuck_at_0": [24]},
                                 {"voltage": 0.9, "flip": [0]}])
    faulty, audit = inject_faults(img, InjectConfig(fault="map", voltage=0.8, chip=0, fault_map=path))
    out = faulty.codes.view(np.uint8)
    assert out[0] == codes[0] ^ 1 and out[1] == codes[1] ^ 2
    assert out[2] == codes[2] | 0x80 and out[3] == codes[3] & 0xFE
    assert np.array_equal(out[4:], codes[4:])
    assert audit.faulty_cells == 4 and audit.ber == pytest.approx(4 / (8192 * 128))
    with pytest.raises(NfedgeError, match="no map at voltage"):
        inject_faults(img, InjectConfig(fault="map", voltage=0.85, fault_map=path))


def test_fault_map_errors(tmp_path):
    img = random_image(1000, 8)
    bad_geo = _fault_map(tmp_path, [{"voltage": 0.8, "flip": [1]}], geometry={"rows": 10, "cols": 10})
    with pytest.raises(NfedgeError, match="geometry"):
        inject_faults(img, InjectConfig(fault="map", voltage=0.8, fault_map=bad_geo))
    out_of_range = _fault_map(tmp_path, [{"voltage": 0.8, "flip": [8192 * 128]}])
    with pytest.raises(NfedgeError, match="outside"):
        inject_faults(img, InjectConfig(fault="map", voltage=0.8, fault_map=out_of_range))
    big = random_image(200_000, 8, geometry=SramGeometry(rows=1024, cols=128))
    one_bank = _fault_map(tmp_path, [{"voltage": 0.8, "flip": [1]}], geometry={"rows": 1024, "cols": 128})
    with pytest.raises(NfedgeError, match="bank"):
        inject_faults(big, InjectConfig(fault="map", voltage=0.8, fault_map=one_bank))
