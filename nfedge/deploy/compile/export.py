"""The deployable graphs: the base model reading its weights from the flat int8 weight image, and the
NeuralFuse front F(x) = clip(x + G(x), -1, 1); ONNX export of both.

`ImageWeightedModel` is the one source of truth for "the base model as the target runs it": the host
simulation (torch), the ONNX export and the TVM import (nfedge.deploy.compile.build) all trace this module, so one
compiled artifact takes any (faulty) image as an input and every path decodes the same bytes the same way:
for each manifest tensor, image[offset:offset+numel] -> reshape -> float32 -> * scale(s) (per tensor or
per output channel), then the float model runs with those weights (biases and BatchNorm stay float).

    wrapped = ImageWeightedModel(base_model, image.manifest)
    logits = wrapped(x, image_tensor(image))            # torch, any image bytes
    export_onnx(wrapped, "base.onnx", (x, image_tensor(image)), ["x", "image"], ["logits"])
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from nfedge.errors import NfedgeError
from nfedge.fileio import atomic_write_bytes
from nfedge.models.generators import neuralfuse_transform
from nfedge.sram.image import ImageManifest, WeightImage

__all__ = [
    "ImageWeightedModel", "NeuralFuseFront", "image_tensor", "check_manifest_matches",
    "export_onnx", "export_base_onnx", "export_generator_onnx",
]


def image_tensor(image: WeightImage | np.ndarray | bytes | bytearray | memoryview | torch.Tensor) -> torch.Tensor:
    """The flat int8 image as a (contiguous, writable) torch tensor: the graph's `image` input."""
    if isinstance(image, WeightImage):
        image = image.codes
    if isinstance(image, torch.Tensor):
        t = image.detach().reshape(-1)
        if t.dtype != torch.int8:
            raise NfedgeError(f"weight image tensor must be int8, got {t.dtype}")
        return t.contiguous()
    if isinstance(image, (bytes, bytearray, memoryview)):
        image = np.frombuffer(bytes(image), dtype=np.int8)
    arr = np.asarray(image)
    if arr.dtype != np.int8:
        if arr.dtype == np.uint8:
            arr = arr.view(np.int8)
        else:
            raise NfedgeError(f"weight image must be int8 bytes, got dtype {arr.dtype}")
    return torch.from_numpy(np.array(arr.reshape(-1), dtype=np.int8, copy=True))


def check_manifest_matches(model: nn.Module, manifest: ImageManifest) -> None:
    """Every manifest tensor must name a parameter of `model` with the same shape."""
    params = dict(model.named_parameters())
    for t in manifest.tensors:
        if t.name not in params:
            raise NfedgeError(f"image tensor {t.name!r} is not a parameter of the {type(model).__name__} model "
                              "(image and model do not belong together)")
        if tuple(params[t.name].shape) != tuple(t.shape):
            raise NfedgeError(f"image tensor {t.name!r} has shape {tuple(t.shape)}, the model's parameter has "
                              f"{tuple(params[t.name].shape)} (image and model do not belong together)")


class ImageWeightedModel(nn.Module):
    """A base model whose quantized weights come from the flat int8 weight image: forward(x, image).

    The wrapped model is kept in eval mode (BatchNorm uses running statistics; the base model is
    frozen in deployment). Weights not in the manifest (biases, BatchNorm) are the model's own floats.
    """

    def __init__(self, model: nn.Module, manifest: ImageManifest) -> None:
        super().__init__()
        manifest.validate()
        check_manifest_matches(model, manifest)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.entries = tuple(manifest.tensors)
        self.total_bytes = int(manifest.total_bytes)
        self.bits = int(manifest.bits)
        for i, t in enumerate(self.entries):
            s = t.scale_tensor()
            if s.dim() == 1:  # per output channel: broadcast over the other dims
                s = s.reshape(-1, *([1] * (len(t.shape) - 1)))
            self.register_buffer(f"scale_{i}", s.clone(), persistent=False)

    def train(self, mode: bool = True) -> "ImageWeightedModel":  # the deployed model never trains
        super().train(False)
        return self

    def decode(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """{parameter name: float32 weight} decoded from the image (same numbers as WeightImage.dequantized_weights)."""
        weights = {}
        for i, t in enumerate(self.entries):
            codes = image[t.offset: t.offset + t.numel].reshape(t.shape)
            weights[t.name] = codes.to(torch.float32) * getattr(self, f"scale_{i}")
        return weights

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.model, self.decode(image), (x,))


class NeuralFuseFront(nn.Module):
    """F(x) = clip(x + G(x), -1, 1): what runs in front of the base model (at nominal voltage)."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator.eval()
        for p in self.generator.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "NeuralFuseFront":
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return neuralfuse_transform(self.generator, x)


def export_onnx(module: nn.Module, path: str | Path, example_inputs: Sequence[torch.Tensor],
                input_names: Sequence[str], output_names: Sequence[str], dynamic_batch: bool = True,
                opset: int = 18, dynamo: bool = True) -> Path:
    """Export `module` to ONNX (the dynamo exporter by default; dynamo=False uses the TorchScript one).

    With dynamic_batch the first input's dimension 0 is symbolic ("batch"); the other inputs (the
    weight image) keep their static shapes. The file is written atomically.
    """
    path = Path(path)
    module = module.eval()
    args = tuple(example_inputs)
    if len(input_names) != len(args):
        raise NfedgeError(f"export_onnx: {len(args)} example inputs but {len(input_names)} input names")
    tmp = path.with_name(f".{path.name}.export.tmp")
    onnx_log = logging.getLogger("torch.onnx")
    old_level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)  # "torchvision is not installed" chatter from the exporter's registry
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if dynamo:
                dyn = None
                if dynamic_batch:
                    batch = torch.export.Dim("batch", min=1, max=1 << 16)
                    dyn = {input_names[0]: {0: batch}, **{n: None for n in input_names[1:]}}
                    dyn = tuple(dyn[n] for n in input_names)
                prog = torch.onnx.export(module, args, dynamo=True, input_names=list(input_names),
                                         output_names=list(output_names), dynamic_shapes=dyn, opset_version=opset,
                                         optimize=True, verbose=False)
                prog.save(str(tmp), external_data=False)
            else:
                axes = {input_names[0]: {0: "batch"}, output_names[0]: {0: "batch"}} if dynamic_batch else None
                torch.onnx.export(module, args, str(tmp), dynamo=False, input_names=list(input_names),
                                  output_names=list(output_names), dynamic_axes=axes, opset_version=opset)
        atomic_write_bytes(path, tmp.read_bytes())
    except NfedgeError:
        raise
    except Exception as e:  # noqa: BLE001 - exporter errors are many and deep; report one line
        raise NfedgeError(f"ONNX export of {type(module).__name__} failed: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        onnx_log.setLevel(old_level)
        tmp.unlink(missing_ok=True)
    return path


def export_base_onnx(model: nn.Module, image: WeightImage, path: str | Path,
                     input_shape: tuple[int, int, int], **kw) -> Path:
    """The base model with the weight image as its second input: inputs (x [N,C,H,W] float32, image [B] int8)."""
    wrapped = ImageWeightedModel(model, image.manifest)
    x = torch.zeros((2, *input_shape), dtype=torch.float32)
    return export_onnx(wrapped, path, (x, image_tensor(image)), ["x", "image"], ["logits"], **kw)


def export_generator_onnx(generator: nn.Module, path: str | Path, input_shape: tuple[int, int, int],
                          front: bool = True, **kw) -> Path:
    """The generator; with front=True (default) the whole NeuralFuse front F(x) = clip(x + G(x), -1, 1)."""
    module = NeuralFuseFront(generator) if front else generator.eval()
    x = torch.zeros((2, *input_shape), dtype=torch.float32)
    return export_onnx(module, path, (x,), ["x"], ["fx" if front else "g"], **kw)
