"""The base-model and generator registries (timm-style create/list). Entries are added by the modules of
this package (small, tiny, zoo, generators), which nfedge.models imports; a new one is one decorated function."""

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
