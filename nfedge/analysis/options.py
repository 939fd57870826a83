"""The planner's options on one energy model (docs/PLANNER.md "Options and their energy").

Every option reads the base model's weights from SRAM; what differs is which cells hold them, at which voltage, and
what a read passes on. With b the image's bits per weight and TWMA_base its weight-memory accesses (64-bit words of
b-bit weights, nfedge.analysis.dataflow), an option reads f_low TWMA_base word-equivalents from cells at the low
voltage (energy r = e(V) / e(nominal) per access) and f_nom TWMA_base from cells at nominal voltage (energy 1), plus
a generator's TWMA_G at nominal. Against the unprotected base model at nominal voltage:

    ES     = 1 - f_low r - f_nom - TWMA_G / TWMA_base        (Eq. 6 extended)
    MAC-ES = 1 - f_low r - f_nom - MACs_G / MACs_base        (Eq. 7 extended)

| option          | f_low         | f_nom  | what a read passes on                                           |
| base            | 1             | 0      | the bits as read                                                |
| base+ECC        | 72/64         | 0      | SECDED-decoded words, a detected-uncorrectable one zeroed        |
| base+parity     | 65/64         | 0      | words with odd parity zeroed (nfedge.sram.protect)              |
| base+MSB<k>     | (b - k) / b   | k / b  | the top k bits of every code from nominal cells: never wrong    |
| base <b'>-bit   | b' / b        | 0      | codes requantized from the checkpoint at b' bits (post-training) |
| <G>, <G>+MSB<k> | as base/MSB   |        | the same behind generator G (TWMA_G at nominal)                 |
A b'-bit word holds 64 / b' weights, so the same layers need b' / b of the accesses. Not counted: encoder/decoder and
parity logic, a second supply rail for the nominal cells, SRAM area and leakage.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from nfedge.analysis.energy import EnergyConfig, estimate_energy
from nfedge.errors import NfedgeError
from nfedge.sram.ecc import CELL_OVERHEAD, inject_ecc_faults
from nfedge.sram.faults import InjectConfig, inject_faults
from nfedge.sram.image import WeightImage
from nfedge.sram.protect import PARITY_CELL_OVERHEAD, inject_msb_faults, inject_parity_faults
from nfedge.train.checkpoint import load_torch_file
from nfedge.train.eopm import GENERATOR_FORMAT

BASE, ECC, PARITY = "base", "base+ECC", "base+parity"
PROTECTIONS = ("none", "secded", "parity", "msb", "bits")


@dataclasses.dataclass(frozen=True)
class Option:
    label: str
    protection: str  # one of PROTECTIONS
    generator: str | None = None  # registered generator name (its energy count); None: no generator
    inputs: str | None = None  # the scorer's inputs the base model sees: None for x, a generator's label for F(x)
    msb: int = 0  # protection "msb": top bits per code at nominal voltage
    bits: int | None = None  # protection "bits": the requantized precision b' (None: the image's own)
    nominal_only: bool = False  # held at nominal voltage (the b'-bit option at nominal): nothing to search

    @property
    def kind(self) -> str:
        return "generator" if self.generator is not None else self.protection

    def fractions(self, b: int) -> tuple[float, float]:
        """(f_low, f_nom): the base model's accesses read from low-voltage and nominal cells, per unprotected access."""
        if self.protection == "secded":
            return CELL_OVERHEAD, 0.0
        if self.protection == "parity":
            return PARITY_CELL_OVERHEAD, 0.0
        if self.protection == "msb":
            return (b - self.msb) / b, self.msb / b
        if self.protection == "bits":
            return (0.0, self.bits / b) if self.nominal_only else (self.bits / b, 0.0)
        return 1.0, 0.0

    def cells(self, n_weights: int, b: int) -> dict[str, int]:
        """SRAM cells holding the base model's weights, at the low voltage and at nominal."""
        words = -(-n_weights * b // 64)
        if self.protection == "secded":
            return {"low_voltage": 72 * words, "nominal": 0}
        if self.protection == "parity":
            return {"low_voltage": 65 * words, "nominal": 0}
        if self.protection == "msb":
            return {"low_voltage": n_weights * (b - self.msb), "nominal": n_weights * self.msb}
        bits = self.bits if self.protection == "bits" else b
        return {"low_voltage": 0, "nominal": n_weights * bits} if self.nominal_only else \
            {"low_voltage": n_weights * bits, "nominal": 0}

    def inject(self, images: dict[int, WeightImage], icfg: InjectConfig, ecc_policy: str
               ) -> tuple[WeightImage, dict[str, Any] | None]:
        """This option's image as chip icfg.chip reads it at icfg's voltage (images: the clean image per bits)."""
        if self.protection == "secded":
            img, audit = inject_ecc_faults(images[0], icfg, ecc_policy)
            return img, audit.to_dict()
        if self.protection == "parity":
            img, audit = inject_parity_faults(images[0], icfg)
            return img, audit.to_dict()
        if self.protection == "msb":
            return inject_msb_faults(images[0], icfg, self.msb)
        img = images[self.bits if self.protection == "bits" else 0]
        if self.nominal_only:
            return img, None
        return inject_faults(img, icfg)[0], None

    def image_key(self) -> tuple:
        """Options with equal keys read the same faulty image of a chip (the base and its generators)."""
        return (self.protection, self.msb, self.bits, self.nominal_only)


def build_options(generators: list[str], ecc: bool, parity: bool, msb: tuple[int, ...], fewer_bits: tuple[int, ...],
                  generator_msb: int, image_bits: int) -> list[Option]:
    """The options of a plan, in table order."""
    opts = [Option(BASE, "none")]
    opts += [Option(ECC, "secded")] if ecc else []
    opts += [Option(PARITY, "parity")] if parity else []
    opts += [Option(f"base+MSB{k}", "msb", msb=k) for k in msb if k < image_bits]
    for b in (b for b in fewer_bits if b < image_bits):
        opts += [Option(f"base {b}-bit", "bits", bits=b), Option(f"base {b}-bit@nominal", "bits", bits=b, nominal_only=True)]
    for g in generators:
        opts.append(Option(g, "none", generator=g, inputs=g))
    if generator_msb and generator_msb < image_bits:
        opts += [Option(f"{g}+MSB{generator_msb}", "msb", generator=g, inputs=g, msb=generator_msb) for g in generators]
    return opts


def vela_generator(bundle_dir: str) -> str | None:
    """The generator architecture an Ethos-U bundle's Vela traffic was measured for (its host/generator.pt, read as
    data with weights_only), or None for a bundle of the base model alone."""
    path = Path(bundle_dir) / "host" / "generator.pt"
    if not path.is_file():
        return None
    return str(load_torch_file(path, "the Vela bundle's generator checkpoint", GENERATOR_FORMAT)["generator"])


def option_energy(o: Option, base: str, classes: int, calibration: str, input_shape: str, voltage: float, b: int,
                  generator_arch: str | None, vela_bundle: str | None = None) -> dict[str, Any]:
    """ES (Eq. 6) and MAC-ES (Eq. 7) of option o at `voltage`, from `nfedge energy`'s counts and r there. With
    `vela_bundle` (an Ethos-U bundle, `nfedge energy --vela-bundle`), ES weighs Vela's weight bytes read per
    inference (base, and the bundle's generator) instead of the closed form's accesses; MAC-ES is unchanged."""
    e = estimate_energy(EnergyConfig(base=base, generator=generator_arch, input=input_shape, classes=classes,
                                     voltage=voltage, calibration=calibration, vela_bundle=vela_bundle))
    f_low, f_nom = o.fractions(b)
    gw, gm = e["generator_weight_accesses"] or 0, e["generator_macs"] or 0
    bw, bm = e["base_weight_accesses"], e["base_macs"]
    if vela_bundle is not None:
        v = e["vela"]
        if o.generator is not None and generator_arch != vela_generator(vela_bundle):
            raise NfedgeError(f"the Vela bundle {vela_bundle} measured generator {vela_generator(vela_bundle)}, not "
                              f"{generator_arch}: plan {o.generator} without --vela-bundle, or build its own bundle")
        bv, gv = v["base_weight_read_bytes"], (v["generator_weight_read_bytes"] or 0) if o.generator else 0
        es, mes = 1.0 - f_low * e["r"] - f_nom - gv / bv, 1.0 - f_low * e["r"] - f_nom - gm / bm
    elif (f_low, f_nom) == (1.0, 0.0):  # the unprotected model: exactly `nfedge energy`'s numbers
        es, mes = e["energy_saving"], e["mac_energy_saving"]
    else:
        es, mes = 1.0 - f_low * e["r"] - f_nom - gw / bw, 1.0 - f_low * e["r"] - f_nom - gm / bm
    return {"ber": e["ber"], "r": e["r"], "energy_saving": es, "mac_energy_saving": mes,
            "base_weight_accesses": bw, "generator_weight_accesses": e["generator_weight_accesses"],
            "base_macs": bm, "generator_macs": e["generator_macs"],
            # word-equivalent accesses per inference and the energy of each (relative to one at nominal voltage)
            "accesses": {"low_voltage": f_low * bw, "nominal": f_nom * bw + gw},
            "energy_per_access": {"low_voltage": e["r"], "nominal": 1.0},
            "weight_traffic": "vela" if vela_bundle is not None else "closed form"}
