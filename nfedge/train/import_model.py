"""`nfedge import-model`: a user's own trained PyTorch classifier as an ordinary nfedge base checkpoint.

Two sources, one result (<out>/base.pt + <out>/config.json) that every later stage loads unchanged:
  class + state dict   `package.module:ClassName` (importable: installed or on PYTHONPATH) or
                       `path/to/file.py:ClassName`, constructor kwargs (JSON values), and a state-dict
                       file read with torch.load(weights_only=True);
  exported program     a `torch.export.save` .pt2 file; its `.module()` is the classifier. Export it in
                       eval mode with a dynamic batch dimension.
The checkpoint's "source" says how to rebuild the module (nfedge.train.checkpoint.load_checkpoint calls
rebuild_module): the class path, kwargs and the sha256 of the class's source file; or the .pt2 bytes
themselves with their sha256 (embedded, so a bundle's host/base.pt copy stays self-contained).

Only code the user names is imported: the named module, or the named file with its folder on sys.path during
its import (nfedge.train.model_source); the sha256 of every module file loaded from that folder is recorded.
Loading a class-sourced checkpoint imports that class again, so treat such a checkpoint like code; an exported
program holds no Python code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nfedge.config import StageConfig, require
from nfedge.data import DataConfig, load_dataset
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_dir, atomic_write_json, sha256_bytes, sha256_file
from nfedge.progress import DEFAULT, Progress
from nfedge.quant import quantizable_weight_names
from nfedge.runtime import batches
from nfedge.train.base import qat_accuracy
from nfedge.train.checkpoint import CHECKPOINT_FORMAT, atomic_torch_save, load_checkpoint, load_torch_file
from nfedge.train.model_source import (
    CLASS_SOURCE,
    PROGRAM_SOURCE,
    class_file,
    class_source_file,
    construct,
    first_line,
    folder_files,
    import_class,
    load_program,
)


@dataclasses.dataclass(frozen=True)
class ImportModelConfig(StageConfig):
    model_class: str | None = None  # "package.module:ClassName" or "path/to/file.py:ClassName"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # constructor arguments (JSON values)
    state_dict: str | None = None  # .pt file with the class's state dict
    exported_program: str | None = None  # .pt2 file from torch.export.save (instead of class + state dict)
    input: tuple[int, int, int] = (1, 32, 32)  # C, H, W of one image (batch 1 on the target)
    classes: int = 10  # logits per image
    name: str | None = None  # the checkpoint's model name (default: the class name or the .pt2 file stem)
    data: DataConfig | None = None  # test set to check the shape against and measure accuracy on (optional)

    def validate(self) -> None:
        require((self.model_class is None) != (self.exported_program is None),
                "give a model class (with a state dict) or an exported program, not both")
        if self.model_class is not None:
            require(":" in self.model_class and all(self.model_class.rsplit(":", 1)),
                    f"model class must be package.module:ClassName or path/to/file.py:ClassName, got {self.model_class!r}")
            require(self.state_dict is not None, "a model class needs its state dict (--state-dict FILE.pt)")
        else:
            require(self.state_dict is None and not self.kwargs,
                    "an exported program holds its own weights and arguments: no state dict or kwargs")
        require(isinstance(self.kwargs, dict), "kwargs must be a JSON object")
        require(len(self.input) == 3 and all(isinstance(v, int) and v >= 1 for v in self.input),
                f"input must be C, H, W positive integers, got {self.input!r}")
        require(isinstance(self.classes, int) and self.classes >= 2, f"classes must be an integer >= 2, got {self.classes!r}")


# ------------------------------------------------------------------------------------------- checks


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise NfedgeError(f"state dict {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise NfedgeError(f"state dict {p} cannot be read with weights_only=True ({type(e).__name__}); "
                          "save model.state_dict(), not the model object") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # {"state_dict": ..., "epoch": ...}
        obj = obj["state_dict"]
    if not (isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        raise NfedgeError(f"state dict {p} is not a mapping of names to tensors")
    return obj


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    missing = sorted(set(model.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        parts = [f"missing {_few(missing)}" if missing else "", f"unexpected {_few(unexpected)}" if unexpected else ""]
        raise NfedgeError(f"{what} does not fit {type(model).__name__}: keys " + "; ".join(p for p in parts if p))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        msg = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), first_line(e))
        raise NfedgeError(f"{what} does not fit {type(model).__name__}: {msg}") from None


def check_classifier(model: nn.Module, input_shape: tuple[int, int, int], classes: int) -> None:
    """One-line errors unless the model maps [N, C, H, W] to [N, classes] finite logits, image by image
    (no batch statistics: eval mode), in float32, with conv/linear weights to quantize."""
    shape = "x".join(map(str, input_shape))
    bad = [n for n, p in model.named_parameters() if p.dtype != torch.float32]
    if bad:
        raise NfedgeError(f"the model's parameters must be float32 ({bad[0]} is not): convert with .float() first")
    if not quantizable_weight_names(model):
        raise NfedgeError("the model has no Conv2d or Linear weights to quantize")
    x = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            one = model(x[:1])
        except Exception as e:  # noqa: BLE001
            raise NfedgeError(f"the model does not run on a {shape} image: {type(e).__name__}: {first_line(e)}") from None
        if not isinstance(one, torch.Tensor) or tuple(one.shape) != (1, classes):
            got = tuple(one.shape) if isinstance(one, torch.Tensor) else type(one).__name__
            raise NfedgeError(f"the model's output is {got} for one {shape} image, expected (1, {classes}) logits")
        try:
            two = model(x)
        except Exception as e:  # noqa: BLE001
            raise NfedgeError(f"the model does not run on a batch of 2 ({type(e).__name__}: {first_line(e)}); "
                              "export it with a dynamic batch dimension") from None
    if not torch.isfinite(one).all():
        raise NfedgeError("the model's logits are not finite on a random input")
    if not torch.allclose(two[:1], one, rtol=1e-4, atol=1e-5):
        raise NfedgeError("an image's logits depend on the rest of the batch: save or export the model in eval mode")


@torch.no_grad()
def float_accuracy(model: nn.Module, test) -> float:
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches(test, 256))
    return correct / len(test)


# --------------------------------------------------------------------------------------------- stage


def import_model(cfg: ImportModelConfig, out_dir: str | Path, progress: Progress = DEFAULT) -> Path:
    """Build, check and write the user's classifier as <out>/base.pt (atomically: nothing on error)."""
    if cfg.data is not None:  # recorded with its absolute path: later stages run from other folders
        cfg = dataclasses.replace(cfg, data=cfg.data.absolute())
    if cfg.model_class is not None:
        cls = import_class(cfg.model_class)
        model = construct(cls, cfg.kwargs)
        load_weights(model, read_state_dict(cfg.state_dict), f"state dict {cfg.state_dict}")
        f = class_source_file(cls)
        where, _, attr = cfg.model_class.rpartition(":")
        path = class_file(where)  # recorded absolute: the checkpoint is loaded from other directories too
        source = {"kind": CLASS_SOURCE, "class": f"{path}:{attr}" if path else cfg.model_class,
                  "kwargs": dict(cfg.kwargs), "file_sha256": sha256_file(f) if f is not None else None}
        if path is not None:  # the file and the neighbours it imported: editing any of them is a new model
            source["folder_files"] = folder_files(path)
        name = cfg.name or cls.__name__
    else:
        p = Path(cfg.exported_program)
        if not p.is_file():
            raise NfedgeError(f"exported program {p} does not exist")
        data = p.read_bytes()
        model = load_program(data, f"exported program {p}")
        source = {"kind": PROGRAM_SOURCE, "file": p.name, "sha256": sha256_bytes(data), "program": data}
        name = cfg.name or p.stem
    model.eval()
    c, h, w = cfg.input
    meta: dict[str, Any] = {"config": cfg.to_dict(),
                            "dataset": {"channels": c, "image_size": [h, w], "num_classes": cfg.classes}}
    test = None
    if cfg.data is not None:  # the declared shape must be the dataset's before the model is run on it
        _, test, info = load_dataset(cfg.data)
        got = (info.channels, *info.image_size, info.num_classes)
        if got != (c, h, w, cfg.classes):
            raise NfedgeError(f"dataset {info.name} has {info.channels}x{info.image_size[0]}x{info.image_size[1]} images "
                              f"and {info.num_classes} classes; the model was declared {c}x{h}x{w} with {cfg.classes}")
        meta["dataset"] = dataclasses.asdict(info)
    check_classifier(model, cfg.input, cfg.classes)
    if test is not None:
        meta["test_accuracy"] = float_accuracy(model, test)
        progress.info(f"{name}: float test accuracy {100 * meta['test_accuracy']:.2f}% on {len(test)} {info.name} images")
    ckpt = {"format": CHECKPOINT_FORMAT, "version": 1, "model": name, "in_channels": c, "num_classes": cfg.classes,
            "source": source, "state_dict": model.state_dict(), "meta": meta}
    with atomic_dir(out_dir) as tmp:
        atomic_torch_save(tmp / "base.pt", ckpt)
        atomic_write_json(tmp / "config.json", cfg.to_dict())
    return Path(out_dir) / "base.pt"


def adopt_checkpoint(src: str | Path, data: DataConfig, bits: int, dst: str | Path, progress: Progress = DEFAULT) -> float:
    """Copy a base checkpoint (imported or trained elsewhere) to `dst` for `nfedge run`, with `data` recorded as
    its dataset and its test accuracy at `bits`-bit weights (as train-base records it); returns that accuracy."""
    model, _ = load_checkpoint(src)  # rebuilds and checks the module
    ckpt = load_torch_file(src, "checkpoint", CHECKPOINT_FORMAT)
    _, test, info = load_dataset(data)
    size = tuple(ckpt["meta"].get("dataset", {}).get("image_size", info.image_size))
    if (ckpt["in_channels"], *size, ckpt["num_classes"]) != (info.channels, *info.image_size, info.num_classes):
        raise NfedgeError(f"checkpoint {src} takes {ckpt['in_channels']}x{size[0]}x{size[1]} images with "
                          f"{ckpt['num_classes']} classes; the run's dataset {info.name} has "
                          f"{info.channels}x{info.image_size[0]}x{info.image_size[1]} and {info.num_classes}")
    acc = qat_accuracy(model, test, bits, False, torch.device("cpu"))
    progress.info(f"base {ckpt['model']} from {src}: test accuracy ({bits}-bit) {100 * acc:.2f}%")
    meta = dict(ckpt["meta"])
    meta.update(config={**meta.get("config", {}), "data": data.absolute().to_dict()}, dataset=dataclasses.asdict(info),
                test_accuracy=acc, adopted_from=str(src))
    atomic_torch_save(dst, {**ckpt, "meta": meta})
    return acc


def _few(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")
