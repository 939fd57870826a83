"""Model registries: base classifiers and NeuralFuse generators (timm-style create/list).

    create_base_model("resnet18", in_channels=3, num_classes=10)
    create_generator("ConvL", in_channels=3)
Adding a model is one `@BASE_MODELS.register(name)` (or GENERATORS) function in a module imported below.
"""

from __future__ import annotations

from torch import nn

from nfedge.registry import Registry

BASE_MODELS: Registry = Registry("base model")
GENERATORS: Registry = Registry("generator")


def create_base_model(name: str, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    return BASE_MODELS.get(name)(in_channels=in_channels, num_classes=num_classes)


def create_generator(name: str, in_channels: int = 3, input_size: tuple[int, int] = (32, 32)) -> nn.Module:
    return GENERATORS.get(name)(in_channels=in_channels, input_size=input_size)


def list_base_models() -> list[str]:
    return BASE_MODELS.names()


def list_generators() -> list[str]:
    return GENERATORS.names()


# Registration side effects: imported last so the registries exist.
from nfedge.models import small, zoo, generators  # noqa: E402,F401
