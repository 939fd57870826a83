"""The weight memory image: the base model's quantized weight codes exactly as the target reads them.

On disk an image is a directory with two files (layout documented in docs/MEMORY_IMAGE.md):
  weights.bin    one signed byte per weight code, tensors back to back in manifest order, no padding
                 (layout "int8-sext": a b-bit two's complement code sign-extended to 8 bits)
  manifest.json  format, version, bits, per-tensor name/shape/scales/offset/layout, total size, SRAM
                 geometry, sha256 of weights.bin and of the source checkpoint, and for a faulty image
                 the fault record (chip, voltage, BER, fault kind, audit)
Only the low b bits of each byte are stored SRAM cells: weight i's bit j is stored bit i*b + j,
mapped linearly into banks of rows x cols cells (see nfedge.sram.faults).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nfedge import __version__
from nfedge.config import StageConfig, require
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_dir, atomic_write_files, json_bytes, sha256_bytes
from nfedge.quant import check_bits, dequantize, quantizable_weight_names, quantize_symmetric

IMAGE_FORMAT = "nfedge-weight-image"
IMAGE_VERSION = 1
LAYOUT = "int8-sext"
IMAGE_FILE, MANIFEST_FILE = "weights.bin", "manifest.json"


@dataclasses.dataclass(frozen=True)
class SramGeometry:
    rows: int = 8192  # rows per bank
    cols: int = 128  # bit cells per row

    @property
    def bank_cells(self) -> int:
        return self.rows * self.cols

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise NfedgeError(f"SRAM geometry must be positive, got {self.rows} x {self.cols}")


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]
    offset: int  # bytes from the start of weights.bin (= index of the first code)
    scales: tuple[float, ...]  # one per tensor, or one per output channel (shape[0])
    bits: int
    layout: str = LAYOUT

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def scale_tensor(self) -> torch.Tensor:
        s = torch.tensor(self.scales, dtype=torch.float32)
        return s if self.granularity == "per-channel" else s.reshape(())

    @property
    def granularity(self) -> str:
        # A 1-output-channel tensor is stored per tensor either way (one scale, same numbers).
        return "per-channel" if len(self.scales) > 1 else "per-tensor"


@dataclasses.dataclass(frozen=True)
class ImageManifest:
    bits: int
    tensors: tuple[TensorEntry, ...]
    total_bytes: int
    image_sha256: str
    source_sha256: str
    geometry: SramGeometry = SramGeometry()
    faults: dict[str, Any] | None = None  # None for a clean image
    provenance: dict[str, Any] | None = None  # config and versions that made the clean image
    format: str = IMAGE_FORMAT
    version: int = IMAGE_VERSION

    @property
    def stored_bits(self) -> int:
        return self.total_bytes * self.bits

    @property
    def banks(self) -> int:
        return -(-self.stored_bits // self.geometry.bank_cells)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stored_bits"] = self.stored_bits
        d["banks"] = self.banks
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ImageManifest":
        try:
            if d.get("format") != IMAGE_FORMAT:
                raise NfedgeError(f"manifest format is {d.get('format')!r}, expected {IMAGE_FORMAT!r}")
            if d.get("version") != IMAGE_VERSION:
                raise NfedgeError(f"manifest version {d.get('version')!r} is not supported (this nfedge reads {IMAGE_VERSION})")
            tensors = tuple(
                TensorEntry(name=t["name"], shape=tuple(int(x) for x in t["shape"]), offset=int(t["offset"]),
                            scales=tuple(float(s) for s in t["scales"]), bits=int(t["bits"]), layout=t["layout"])
                for t in d["tensors"])
            return ImageManifest(bits=int(d["bits"]), tensors=tensors, total_bytes=int(d["total_bytes"]),
                                 image_sha256=str(d["image_sha256"]), source_sha256=str(d["source_sha256"]),
                                 geometry=SramGeometry(**d["geometry"]), faults=d.get("faults"),
                                 provenance=d.get("provenance"))
        except (KeyError, TypeError, ValueError) as e:
            raise NfedgeError(f"malformed manifest: {type(e).__name__}: {e}") from None

    def validate(self) -> None:
        check_bits(self.bits)
        end = 0
        for t in self.tensors:
            if t.bits != self.bits:
                raise NfedgeError(f"tensor {t.name}: bits {t.bits} differ from the image's {self.bits}")
            if t.layout != LAYOUT:
                raise NfedgeError(f"tensor {t.name}: unknown layout {t.layout!r} (known: {LAYOUT})")
            if t.offset != end:
                raise NfedgeError(f"tensor {t.name}: offset {t.offset}, expected {end} (tensors are back to back)")
            if len(t.scales) not in (1, t.shape[0]) or not all(np.isfinite(t.scales)) or min(t.scales) <= 0:
                raise NfedgeError(f"tensor {t.name}: scales must be 1 or shape[0] positive finite numbers")
            end += t.numel
        if end != self.total_bytes:
            raise NfedgeError(f"manifest tensors cover {end} bytes but total_bytes is {self.total_bytes}")


@dataclasses.dataclass(frozen=True)
class WeightImage:
    """An image in memory: int8 codes (a read-only numpy array) and its manifest."""

    codes: np.ndarray
    manifest: ImageManifest

    def tensor_codes(self, entry: TensorEntry) -> np.ndarray:
        return self.codes[entry.offset: entry.offset + entry.numel].reshape(entry.shape)

    def dequantized_weights(self) -> dict[str, torch.Tensor]:
        """{state-dict name: float32 weight} decoded from these bytes (the host simulation's weights)."""
        return {t.name: dequantize(torch.from_numpy(self.tensor_codes(t).copy()), t.scale_tensor())
                for t in self.manifest.tensors}


@dataclasses.dataclass(frozen=True)
class QuantizeConfig(StageConfig):
    bits: int = 8  # weight precision, 2..8
    per_channel: bool = False  # one scale per output channel instead of per tensor (the paper's default)
    sram_rows: int = 8192  # rows per SRAM bank
    sram_cols: int = 128  # bit cells per row

    def validate(self) -> None:
        check_bits(self.bits)
        require(self.sram_rows >= 1 and self.sram_cols >= 1, "SRAM rows and columns must be positive")


def quantize_to_image(model: nn.Module, cfg: QuantizeConfig, source_sha256: str = "") -> WeightImage:
    """The quantize stage: a model's conv and linear weights -> a clean weight image."""
    image = build_image(model, cfg.bits, cfg.per_channel, source_sha256, SramGeometry(cfg.sram_rows, cfg.sram_cols))
    prov = {"config": cfg.to_dict(), "nfedge": __version__, "torch": torch.__version__}
    return WeightImage(image.codes, dataclasses.replace(image.manifest, provenance=prov))


def build_image(model: nn.Module, bits: int, per_channel: bool = False, source_sha256: str = "",
                geometry: SramGeometry = SramGeometry()) -> WeightImage:
    """Quantize a model's conv and linear weights into a clean weight image."""
    check_bits(bits)
    params = dict(model.named_parameters())
    chunks, entries, offset = [], [], 0
    for name in quantizable_weight_names(model):
        codes, scale = quantize_symmetric(params[name], bits, per_channel)
        flat = codes.reshape(-1).numpy()
        scales = tuple(float(s) for s in scale.reshape(-1).tolist())
        entries.append(TensorEntry(name=name, shape=tuple(codes.shape), offset=offset, scales=scales, bits=bits))
        chunks.append(flat)
        offset += flat.size
    if not entries:
        raise NfedgeError("the model has no conv or linear weights to quantize")
    codes = np.concatenate(chunks).astype(np.int8)
    manifest = ImageManifest(bits=bits, tensors=tuple(entries), total_bytes=int(codes.size),
                             image_sha256=sha256_bytes(codes.tobytes()), source_sha256=source_sha256,
                             geometry=geometry)
    manifest.validate()
    codes.setflags(write=False)
    return WeightImage(codes, manifest)


def with_codes(image: WeightImage, codes: np.ndarray, faults: dict[str, Any] | None) -> WeightImage:
    """A new image with other bytes (e.g. after fault injection); manifest hash and fault record updated."""
    codes = np.ascontiguousarray(codes, dtype=np.int8)
    codes.setflags(write=False)
    m = dataclasses.replace(image.manifest, image_sha256=sha256_bytes(codes.tobytes()), faults=faults)
    return WeightImage(codes, m)


def write_image(image: WeightImage, out_dir: str | Path) -> Path:
    """Write weights.bin + manifest.json atomically (the directory appears complete or not at all)."""
    with atomic_dir(out_dir) as tmp:  # an OSError names <out_dir>/weights.bin, not the temp dir
        atomic_write_files({tmp / IMAGE_FILE: image.codes.tobytes(),
                            tmp / MANIFEST_FILE: json_bytes(image.manifest.to_dict())})
    return Path(out_dir)


def read_image(image_dir: str | Path) -> WeightImage:
    """Read and validate an image directory: manifest format, layout, size and sha256."""
    d = Path(image_dir)
    mpath, ipath = d / MANIFEST_FILE, d / IMAGE_FILE
    if not d.is_dir():
        raise NfedgeError(f"image directory {d} does not exist (expected {IMAGE_FILE} and {MANIFEST_FILE} in it)")
    for p in (mpath, ipath):
        if not p.is_file():
            raise NfedgeError(f"image directory {d} has no {p.name}")
    try:
        manifest = ImageManifest.from_dict(json.loads(mpath.read_text()))
    except json.JSONDecodeError as e:
        raise NfedgeError(f"{mpath}: not valid JSON ({e})") from None
    manifest.validate()
    data = ipath.read_bytes()
    if len(data) != manifest.total_bytes:
        raise NfedgeError(f"{ipath}: {len(data)} bytes, manifest says {manifest.total_bytes} (truncated or wrong file)")
    digest = sha256_bytes(data)
    if digest != manifest.image_sha256:
        raise NfedgeError(f"{ipath}: sha256 {digest[:12]}... does not match the manifest's {manifest.image_sha256[:12]}...")
    codes = np.frombuffer(data, dtype=np.int8)
    return WeightImage(codes, manifest)
