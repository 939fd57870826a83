"""CIFAR-style base classifiers: ResNet18/50 and VGG11/16/19 (the NeuralFuse paper's base models).

Layer for layer these are the well-known pytorch-cifar models (3x3 stem conv at stride 1, no max-pool
for ResNet; conv3x3+BN+ReLU stacks with a single Linear(512, classes) head for VGG), so at 3x32x32 and
10 classes the parameter counts are the paper's: ResNet18 11,173,962; ResNet50 23,520,842;
VGG11 9,231,114; VGG16 14,728,266; VGG19 20,040,522.

Any input channel count and class count work. The head is AdaptiveAvgPool2d(1) + flatten + Linear: at
32x32 it is exactly the original (ResNet's avg_pool2d(4) over a 4x4 map; VGG's AvgPool(1, 1) over a
1x1 map), and it lets any input of at least 32x32 run. Only Conv2d, BatchNorm2d, ReLU (not in place),
MaxPool2d, AdaptiveAvgPool2d, Linear, flatten and add are used, so the models export with torch.export
and convert to TVM Relax.
"""

from __future__ import annotations

from torch import nn

from nfedge.models.registry import BASE_MODELS

# --------------------------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(cin, planes * self.expansion, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(cin, planes * self.expansion, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity, or 1x1 conv + BN when the block changes the shape."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    def __init__(self, block: type[nn.Module], num_blocks: tuple[int, int, int, int],
                 in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self._cin = 64
        self.layer1 = self._make_layer(block, 64, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block: type[nn.Module], planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self._cin, planes, s))
            self._cin = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.pool(out).flatten(1))


@BASE_MODELS.register("resnet18")
def resnet18(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet18 (BasicBlock x [2, 2, 2, 2]); 11,173,962 parameters at 3 channels / 10 classes."""
    return ResNet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes)


@BASE_MODELS.register("resnet50")
def resnet50(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR ResNet50 (Bottleneck x [3, 4, 6, 3]); 23,520,842 parameters at 3 channels / 10 classes."""
    return ResNet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes)


# ------------------------------------------------------------------------------------------------ VGG

_VGG_CFG: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """conv3x3 (with bias) + BN + ReLU stacks and max-pools -> global average pool -> Linear(512)."""

    def __init__(self, cfg: list[int | str], in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU()]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        # pytorch-cifar uses AvgPool2d(1, 1) on the 1x1 map left at 32x32; adaptive pooling is the same
        # there and also accepts larger inputs.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@BASE_MODELS.register("vgg11")
def vgg11(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR VGG11 with BN; 9,231,114 parameters at 3 channels / 10 classes."""
    return VGG(_VGG_CFG["vgg11"], in_channels, num_classes)


@BASE_MODELS.register("vgg16")
def vgg16(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR VGG16 with BN; 14,728,266 parameters at 3 channels / 10 classes."""
    return VGG(_VGG_CFG["vgg16"], in_channels, num_classes)


@BASE_MODELS.register("vgg19")
def vgg19(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """CIFAR VGG19 with BN; 20,040,522 parameters at 3 channels / 10 classes."""
    return VGG(_VGG_CFG["vgg19"], in_channels, num_classes)
