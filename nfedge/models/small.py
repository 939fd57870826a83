"""Small CNNs for the default Fashion-MNIST job and for CI (32x32 inputs, any channels/classes).

They use only Conv2d, BatchNorm2d, ReLU, MaxPool2d and Linear, so every TVM target (including
Cortex-M with a few hundred KiB of SRAM) can run them.
"""

from __future__ import annotations

from torch import nn

from nfedge.models.registry import BASE_MODELS


def _cbr(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """conv blocks (each CBR + max-pool 2) -> global average pool -> Linear."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for w in widths:
            layers += _cbr(cin, w) + [nn.MaxPool2d(2)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@BASE_MODELS.register("cnn-s")
def cnn_s(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """The default Fashion-MNIST base model: 3 conv blocks (32, 64, 128), about 93k weights."""
    return SmallCNN(in_channels, num_classes, (32, 64, 128))


@BASE_MODELS.register("cnn-xs")
def cnn_xs(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """A tiny CNN for CI and tests (8, 16, 32 channels, about 6k weights)."""
    return SmallCNN(in_channels, num_classes, (8, 16, 32))
