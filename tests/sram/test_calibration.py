import math

import pytest

from nfedge.errors import NfedgeError
from nfedge.sram.calibration import list_calibrations, load_calibration


def test_default_table_matches_reference():
    cal = load_calibration()
    assert "sram-14nm" in list_calibrations()
    assert cal.ber_at(0.833) == 0.01115 and cal.ber_at(0.792) == 0.05573 and cal.ber_at(1.0) == 0.0
    assert cal.energy_at(0.833) == pytest.approx(0.6944)
    assert "Chandramoorthy" in cal.source


def test_log_interpolation_between_points():
    cal = load_calibration()
    mid = cal.ber_at((0.833 + 0.875) / 2)
    assert mid == pytest.approx(math.sqrt(0.01115 * 0.00129), rel=1e-9)  # geometric mean at the midpoint
    assert cal.ber_at(0.97) < cal.ber_at(0.958) and cal.ber_at(0.97) > 0  # segment to BER 0: linear


def test_voltage_for_ber_inverts():
    cal = load_calibration()
    v = cal.voltage_for_ber(0.01)
    assert 0.833 < v < 0.875 and cal.ber_at(v) == pytest.approx(0.01, rel=1e-6)


@pytest.mark.parametrize("v", [0.7, 1.01, float("nan")])
def test_voltage_outside_table_is_an_error(v):
    with pytest.raises(NfedgeError, match="outside calibration"):
        load_calibration().ber_at(v)


def test_user_table(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('format = "nfedge-sram-calibration"\nversion = 1\nsource = "lab run 7"\n'
                 "voltage = [0.8, 0.9, 1.0]\nber = [0.02, 0.001, 0.0]\nenergy_per_access = [0.64, 0.81, 1.0]\n")
    cal = load_calibration(p)
    assert cal.name == "mine" and cal.ber_at(0.9) == 0.001


@pytest.mark.parametrize("body, match", [
    ('format = "x"\nversion = 1', "format"),
    ('format = "nfedge-sram-calibration"\nversion = 1\nsource="s"\nvoltage=[1.0, 0.9]\nber=[0,0]\nenergy_per_access=[1,1]', "increasing"),
    ('format = "nfedge-sram-calibration"\nversion = 1\nsource="s"\nvoltage=[0.9, 1.0]\nber=[0.0, 0.1]\nenergy_per_access=[1,1]', "BER"),
    ('format = "nfedge-sram-calibration"\nversion = 1\nvoltage=[0.9, 1.0]', "missing"),
    ("not toml [", "TOML"),
])
def test_bad_user_table(tmp_path, body, match):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(NfedgeError, match=match):
        load_calibration(p)


def test_unknown_builtin_lists_known():
    with pytest.raises(NfedgeError, match="sram-14nm"):
        load_calibration("sram-7nm")
