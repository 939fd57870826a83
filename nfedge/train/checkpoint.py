"""Base-model checkpoints: a registry name + constructor arguments + state dict + the config that made it.

    {"format": "nfedge-checkpoint", "version": 1, "model": "cnn-s", "in_channels": 1, "num_classes": 10,
     "state_dict": {...}, "meta": {...}}
Saved atomically; loading validates the format and rebuilds the module from the registry, or, for a
user's model brought in by `nfedge import-model`, from the checkpoint's "source" (nfedge.train.model_source).
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nfedge.data import DataConfig
from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_write_bytes
from nfedge.models import create_base_model
from nfedge.train.model_source import CLASS_SOURCE, rebuild_module

CHECKPOINT_FORMAT = "nfedge-checkpoint"


def torch_bytes(obj: Any) -> bytes:
    """What torch.save writes, in memory: written with nfedge.fileio's atomic writes, alone or with other files."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_torch_save(path: str | Path, obj: Any) -> None:
    """torch.save to a temp file, then rename: a reader never sees half a checkpoint."""
    atomic_write_bytes(path, torch_bytes(obj))


def load_torch_file(path: str | Path, what: str, fmt: str, weights_only: bool = True) -> dict[str, Any]:
    """A torch-saved dict of format `fmt`, or a one-line NfedgeError naming `what` is wrong with it."""
    p = Path(path)
    if not p.is_file():
        raise NfedgeError(f"{what} {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=weights_only)
    except OSError:  # unreadable or vanished since the check: the CLI names the file and the errno's meaning
        raise
    except Exception as e:  # torch raises many types for a bad file
        raise NfedgeError(f"{what} {p} is not a readable torch file ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise NfedgeError(f"{what} {p} is not an nfedge file of format {fmt!r}")
    return obj


def checkpoint_bytes(model: nn.Module, model_name: str, in_channels: int, num_classes: int,
                     meta: dict[str, Any] | None = None) -> bytes:
    return torch_bytes({"format": CHECKPOINT_FORMAT, "version": 1, "model": model_name, "in_channels": in_channels,
                        "num_classes": num_classes, "state_dict": model.state_dict(), "meta": meta or {}})


def save_checkpoint(path: str | Path, model: nn.Module, model_name: str, in_channels: int, num_classes: int,
                    meta: dict[str, Any] | None = None) -> None:
    atomic_write_bytes(path, checkpoint_bytes(model, model_name, in_channels, num_classes, meta))


def load_checkpoint(path: str | Path, allow_code: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, the checkpoint dict without its state dict). A checkpoint of an imported class
    rebuilds its model by importing that class's code; `allow_code=False` refuses that (a received bundle)."""
    p = Path(path)
    ckpt = load_torch_file(p, "checkpoint", CHECKPOINT_FORMAT)
    source = ckpt.get("source")
    if not allow_code and isinstance(source, dict) and source.get("kind") == CLASS_SOURCE:
        raise NfedgeError(f"checkpoint {p} rebuilds its model by importing {source.get('class')!r}, which runs that code; "
                          "pass trust_bundle_code (`--trust-bundle-code`) only for a bundle you built or trust")
    if source is not None:  # an imported model: its own class or exported program, not a registry entry
        model = rebuild_module(source, f"checkpoint {p}")
        ckpt["source"] = {k: v for k, v in source.items() if k != "program"}  # callers get metadata, not bytes
    else:
        model = create_base_model(ckpt["model"], in_channels=ckpt["in_channels"], num_classes=ckpt["num_classes"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise NfedgeError(f"checkpoint {p}: state dict does not fit {ckpt['model']} ({str(e).splitlines()[0]})") from None
    model.eval()
    return model, {k: v for k, v in ckpt.items() if k != "state_dict"}


def recorded_data(ckpt: dict[str, Any]) -> DataConfig | None:
    """The data set a base checkpoint (its dict, with or without the state dict) records: train-base's, or
    import-model's --dataset; None if it records none."""
    data = ((ckpt.get("meta") or {}).get("config") or {}).get("data")
    return None if data is None else DataConfig.from_dict(data)


def checkpoint_data(meta: dict[str, Any], where: str | Path, root: str | None = None) -> DataConfig:
    """The dataset a base checkpoint was trained (or imported) on: what build (calibration) and faultrun read.
    `root` (a --data-root) replaces the recorded root, e.g. for data moved since."""
    cfg = recorded_data(meta)
    if cfg is None:
        raise NfedgeError(f"{where}: the base checkpoint records no dataset (import-model without --dataset); "
                          "import it again with --dataset")
    return dataclasses.replace(cfg, root=root) if root is not None else cfg.check_recorded_root(f"checkpoint {where}")


def checkpoint_input_shape(meta: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) of one input sample of a base checkpoint (H, W from its recorded dataset; 32x32 when none)."""
    size = meta["meta"].get("dataset", {}).get("image_size", [32, 32])
    return (int(meta["in_channels"]), int(size[0]), int(size[1]))
