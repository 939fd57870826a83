import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfedge.errors import NfedgeError
from nfedge.quant import fake_quantized_weights
from nfedge.sram.image import (
    IMAGE_FILE,
    MANIFEST_FILE,
    QuantizeConfig,
    build_image,
    quantize_to_image,
    read_image,
    write_image,
)


@settings(max_examples=14, deadline=None)
@given(bits=st.integers(2, 8), per_channel=st.booleans(), seed=st.integers(0, 10_000))
def test_image_round_trip_is_exact(tmp_path_factory, bits, per_channel, seed):
    """quantize -> image file -> read -> dequantize == fake-quantized weights, bit for bit."""
    from nfedge.models import create_base_model

    torch.manual_seed(seed)
    model = create_base_model("cnn-xs", in_channels=3, num_classes=7)
    for p in model.parameters():  # spread magnitudes so per-tensor and per-channel scales differ
        p.data.mul_(torch.rand(p.shape[0]).reshape(-1, *([1] * (p.dim() - 1))) * 10)
    out = tmp_path_factory.mktemp("img")
    write_image(build_image(model, bits, per_channel, source_sha256="ab" * 32), out)
    img = read_image(out)
    expected = fake_quantized_weights(model, bits, per_channel)
    got = img.dequantized_weights()
    assert list(got) == list(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name].detach()), name
    assert img.manifest.bits == bits and img.manifest.total_bytes == sum(t.numel for t in img.manifest.tensors)


def test_manifest_contents(tmp_path, small_model):
    img = quantize_to_image(small_model, QuantizeConfig(bits=6, per_channel=True), source_sha256="cd" * 32)
    write_image(img, tmp_path / "img")
    m = json.loads((tmp_path / "img" / MANIFEST_FILE).read_text())
    assert m["format"] == "nfedge-weight-image" and m["version"] == 1 and m["bits"] == 6
    assert m["geometry"] == {"rows": 8192, "cols": 128} and m["stored_bits"] == m["total_bytes"] * 6
    assert m["source_sha256"] == "cd" * 32 and m["provenance"]["config"]["bits"] == 6
    t0 = m["tensors"][0]
    assert t0["offset"] == 0 and t0["layout"] == "int8-sext" and len(t0["scales"]) == t0["shape"][0]


def _written(tmp_path, small_model):
    d = tmp_path / "img"
    write_image(build_image(small_model, 8), d)
    return d


def test_truncated_image_rejected(tmp_path, small_model):
    d = _written(tmp_path, small_model)
    data = (d / IMAGE_FILE).read_bytes()
    (d / IMAGE_FILE).write_bytes(data[:-10])
    with pytest.raises(NfedgeError, match="truncated"):
        read_image(d)


def test_sha_mismatch_rejected(tmp_path, small_model):
    d = _written(tmp_path, small_model)
    data = bytearray((d / IMAGE_FILE).read_bytes())
    data[5] ^= 1
    (d / IMAGE_FILE).write_bytes(bytes(data))
    with pytest.raises(NfedgeError, match="sha256"):
        read_image(d)


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(format="other"), "format"),
    (lambda m: m.update(version=99), "version"),
    (lambda m: m["tensors"][1].update(offset=3), "offset"),
    (lambda m: m["tensors"][0].update(layout="packed"), "layout"),
    (lambda m: m.pop("tensors"), "malformed"),
])
def test_bad_manifest_rejected(tmp_path, small_model, edit, match):
    d = _written(tmp_path, small_model)
    m = json.loads((d / MANIFEST_FILE).read_text())
    edit(m)
    (d / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(NfedgeError, match=match):
        read_image(d)


def test_missing_directory_rejected(tmp_path):
    with pytest.raises(NfedgeError, match="does not exist"):
        read_image(tmp_path / "nope")


def test_write_is_atomic_on_failure(tmp_path, small_model, monkeypatch):
    img = build_image(small_model, 8)
    import nfedge.sram.image as memory

    def boom(files):  # half of weights.bin written, then the failure
        path, data = next(iter(files.items()))
        path.write_bytes(bytes(data)[: len(data) // 2])
        raise RuntimeError("disk full")

    monkeypatch.setattr(memory, "atomic_write_files", boom)
    with pytest.raises(RuntimeError):
        write_image(img, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind
