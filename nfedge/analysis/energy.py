"""Energy accounting: NeuralFuse's energy saving from the weight-memory accesses and MACs of the
base model and the generator (counted by nfedge.analysis.dataflow).

Energy saving (REFERENCE sections 7-8), r = e(V_low) / e(V_nom):
    ES     = 1 - r - TWMA_G / TWMA_base     (Eq. 6: base model at low voltage, generator at nominal)
    MAC-ES = 1 - r - MACs_G / MACs_base     (Eq. 7: the generator's compute against the base model's)
Both are fractions (0.19 = 19%). MACs come from torch.utils.flop_counter (MACs = FLOPs / 2): conv,
transposed conv and matmul/linear only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from nfedge.analysis.dataflow import (
    DEFAULT_ARRAY,
    WEIGHTS_PER_ACCESS,
    as_shape,
    count_params,
    dataflow_description,
    profile_model,
)
from nfedge.config import StageConfig, require
from nfedge.errors import NfedgeError
from nfedge.models import BASE_MODELS, GENERATORS, create_base_model, create_generator
from nfedge.sram.calibration import load_calibration
from nfedge.train.checkpoint import load_checkpoint

DEFAULT_VOLTAGE = 0.833  # V/Vmin: 1.115% BER, r = 0.6944 in the 14 nm table


# ---------------------------------------------------------------------------------- energy saving


def energy_saving(twma_generator: float, twma_base: float, r: float) -> float:
    """Paper Eq. 6: ES = 1 - r - TWMA_G / TWMA_base (a fraction). The base model's weights are read at
    the low voltage (energy r per access), the generator's at nominal (1 per access); relative to the
    base model at nominal voltage: (TWMA_base - (r TWMA_base + TWMA_G)) / TWMA_base."""
    require(twma_base > 0, f"TWMA of the base model must be positive, got {twma_base}")
    require(twma_generator >= 0, f"TWMA of the generator must be >= 0, got {twma_generator}")
    require(r > 0, f"energy ratio r must be positive, got {r}")
    return 1.0 - r - twma_generator / twma_base


def mac_energy_saving(macs_generator: float, macs_base: float, r: float) -> float:
    """Paper Eq. 7: MAC-ES = 1 - r - MACs_G / MACs_base (a fraction): the generator's compute is charged
    against the base model's instead of its weight reads (a large generator can cost more than it saves)."""
    require(macs_base > 0, f"MACs of the base model must be positive, got {macs_base}")
    require(macs_generator >= 0, f"MACs of the generator must be >= 0, got {macs_generator}")
    require(r > 0, f"energy ratio r must be positive, got {r}")
    return 1.0 - r - macs_generator / macs_base


# ------------------------------------------------------------------------------------------ stage


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """'CxHxW' -> (C, H, W), e.g. '3x32x32'."""
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or any(v < 1 for v in shape):
        raise NfedgeError(f"input must be CxHxW with positive integers (e.g. 3x32x32), got {text!r}")
    return shape  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class EnergyConfig(StageConfig):
    base: str = "cnn-s"  # a registered base model, or an nfedge checkpoint (.pt) such as one from import-model
    generator: str | None = "ConvS"  # None: undervolting alone (no generator)
    input: str = "1x32x32"  # CxHxW
    classes: int = 10
    voltage: float | None = DEFAULT_VOLTAGE  # V/Vmin of the base model's weight memory; or ber
    ber: float | None = None  # looked up as the voltage giving this BER in the calibration table
    calibration: str = "sram-14nm"
    array_rows: int = 32
    array_cols: int = 32
    # an Ethos-U bundle (`nfedge build --target ethos-u55-128 --mode integer`): ES also from Vela's weight-read bytes
    vela_bundle: str | None = None

    def validate(self) -> None:
        require(isinstance(self.base, str) and (self.base in BASE_MODELS or self.base.endswith(".pt")),
                f"unknown base model {self.base!r}; known: {', '.join(BASE_MODELS.names())} (or a checkpoint .pt)")
        require(self.generator is None or (isinstance(self.generator, str) and self.generator in GENERATORS),
                f"unknown generator {self.generator!r}; known: {', '.join(GENERATORS.names())}")
        parse_input_shape(self.input)
        require(isinstance(self.classes, int) and not isinstance(self.classes, bool) and self.classes >= 1,
                f"classes must be an integer >= 1, got {self.classes!r}")
        require((self.ber is None) != (self.voltage is None), "give exactly one of voltage and ber")
        if self.voltage is not None:
            require(isinstance(self.voltage, (int, float)) and math.isfinite(self.voltage) and self.voltage > 0,
                    f"voltage must be a positive number (V/Vmin), got {self.voltage!r}")
        if self.ber is not None:
            require(isinstance(self.ber, (int, float)) and 0.0 <= self.ber <= 0.5,
                    f"BER must be in [0, 0.5], got {self.ber!r}")
        require(self.vela_bundle is None or (isinstance(self.vela_bundle, str) and self.vela_bundle != ""),
                "vela_bundle must be an Ethos-U bundle directory or None")
        for f in ("array_rows", "array_cols"):
            v = getattr(self, f)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{f} must be an integer >= 1, got {v!r}")


@contextlib.contextmanager
def _shapes_only() -> Iterator[None]:
    """Build registered models on the meta device: counting needs shapes, not weights (ResNet50 is
    built in milliseconds instead of seconds), and the caller's RNG is left alone."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        yield


def _measure(model: nn.Module, input_shape: tuple[int, ...], array: tuple[int, int]) -> tuple[int, int, int]:
    macs, layers = profile_model(model, input_shape)
    reads = sum(lg.filter_reads(array) for lg in layers or [])
    return count_params(model), int(macs or 0), -(-reads // WEIGHTS_PER_ACCESS)


def estimate_energy(cfg: EnergyConfig) -> dict[str, Any]:
    """Parameters, MACs and TWMA of the base model and the generator at `cfg.input`, and the energy
    saving of running the base model's weight memory at the low voltage behind the generator (at
    nominal voltage): ES (Eq. 6, weight accesses) and MAC-ES (Eq. 7). Savings are fractions."""
    cal = load_calibration(cfg.calibration)
    voltage = float(cfg.voltage) if cfg.voltage is not None else cal.voltage_for_ber(float(cfg.ber))
    ber = float(cfg.ber) if cfg.ber is not None else cal.ber_at(voltage)
    r = cal.energy_at(voltage)
    c, h, w = parse_input_shape(cfg.input)
    array = (cfg.array_rows, cfg.array_cols)
    from_checkpoint = cfg.base not in BASE_MODELS
    with _shapes_only():
        base = None if from_checkpoint else create_base_model(cfg.base, in_channels=c, num_classes=cfg.classes)
        gen = create_generator(cfg.generator, in_channels=c, input_size=(h, w)) if cfg.generator else None
    if from_checkpoint:  # a user's own model: built for real (its class or exported graph), RNG left alone
        with torch.random.fork_rng(devices=[]):
            base, ckpt = load_checkpoint(cfg.base)
        base_name = ckpt["model"]
    else:
        base_name = BASE_MODELS.canonical(cfg.base)
    bp, bm, bw = _measure(base, (c, h, w), array)
    if gen is not None:
        gp, gm, gw = _measure(gen, (c, h, w), array)
    else:
        gp = gm = gw = 0
    require(bw > 0 and bm > 0, f"base model {cfg.base} has no conv/linear layers to count")
    return {
        "base": base_name,
        "generator": GENERATORS.canonical(cfg.generator) if cfg.generator else None,
        "voltage": voltage,
        "ber": ber,
        "r": r,
        "base_params": bp,
        "base_macs": bm,
        "base_weight_accesses": bw,
        "generator_params": gp if gen is not None else None,
        "generator_macs": gm if gen is not None else None,
        "generator_weight_accesses": gw if gen is not None else None,
        "energy_saving": energy_saving(gw, bw, r),
        "mac_energy_saving": mac_energy_saving(gm, bm, r),
        "dataflow": dataflow_description(array),
    } | ({"vela": vela_energy(cfg.vela_bundle, r)} if cfg.vela_bundle else {})


_MAX_MANIFEST_BYTES = 16 << 20


def _bytes(v: Any, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise NfedgeError(f"{where}: weight_read_bytes must be a non-negative integer, got {v!r}")
    return v


def vela_energy(bundle_dir: str, r: float) -> dict[str, Any]:
    """ES (Eq. 6) with Vela's weight traffic in place of TWMA: the weight bytes the NPU reads per inference, summed
    over its memory areas, of the base model and the generator, from an Ethos-U bundle's manifest ("npu", written by
    nfedge.deploy.compile.vela). The manifest is read as data: only these numbers."""
    path = Path(bundle_dir) / "manifest.json"
    where = f"Vela bundle {bundle_dir}"
    if not path.is_file() or path.is_symlink() or path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise NfedgeError(f"{where}: no bundle manifest.json (build one with `nfedge build --target ethos-u55-128 "
                          "--mode integer`)")
    try:
        m = json.loads(path.read_text())
        npu, models = m["npu"], m["npu"]["models"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise NfedgeError(f"{where}: not an Ethos-U bundle (its manifest has no npu table)") from None
    if not isinstance(models, dict) or not isinstance(models.get("base"), dict):
        raise NfedgeError(f"{where}: the npu table has no base model")
    base = _bytes(models["base"].get("weight_read_bytes"), where)
    gen = _bytes(models["generator"].get("weight_read_bytes"), where) if isinstance(models.get("generator"), dict) else None
    require(base > 0, f"{where}: Vela reports no weight reads for the base model")
    return {"accelerator": npu.get("accelerator"), "memory_mode": npu.get("memory_mode"),
            "base_weight_read_bytes": base, "generator_weight_read_bytes": gen,
            "energy_saving": energy_saving(gen, base, r) if gen is not None else 1.0 - r,
            "source": "Vela's estimated weight bytes read per inference (all memory areas)"}


def list_models(input_shape: Sequence[int] = (3, 32, 32), classes: int = 10) -> list[dict[str, Any]]:
    """Every registered base model and generator with its parameters, MACs and TWMA (32x32 OS array)
    at `input_shape` (C, H, W). A model that cannot be built or run at that input gets None figures and
    an "error" line instead of failing the whole list."""
    shape = as_shape(input_shape)
    require(len(shape) == 3, f"input shape must be (C, H, W), got {input_shape!r}")
    require(isinstance(classes, int) and classes >= 1, f"classes must be an integer >= 1, got {classes!r}")
    c, h, w = shape
    rows: list[dict[str, Any]] = []
    entries = [(n, "base", lambda n: create_base_model(n, in_channels=c, num_classes=classes))
               for n in BASE_MODELS.names()]
    entries += [(n, "generator", lambda n: create_generator(n, in_channels=c, input_size=(h, w)))
                for n in GENERATORS.names()]
    with _shapes_only():
        for name, kind, make in entries:
            row: dict[str, Any] = {"name": name, "kind": kind, "params": None, "macs": None, "weight_accesses": None}
            try:
                model = make(name)
                row["params"] = count_params(model)
                _, row["macs"], row["weight_accesses"] = _measure(model, shape, DEFAULT_ARRAY)
            except NfedgeError as e:
                row["error"] = str(e)
            rows.append(row)
    return rows
