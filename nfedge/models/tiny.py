"""The MLPerf Tiny reference models: resnet8 (image classification), ds-cnn (keyword spotting) and
mobilenet-v1-0.25 (visual wake words), written in PyTorch layer for layer after the Keras definitions in
github.com/mlcommons/tiny, benchmark/training/ (read at tag v1.0, commit 1beaec082a2c8a0f3a6626f85cd11b502f8c18e3;
the keyword-spotting and visual-wake-words files are byte-identical at 1afd2c9820f795965a6134facd0b4dfae41ef23f,
the newest commit read; the image-classification file was since made wider by default, see resnet8):

    image_classification/keras_model.py   resnet_v1_eembc()                      3x32x32, 10 classes
    keyword_spotting/keras_model.py       get_model(), model_architecture ds_cnn  1x49x10 MFCC, 12 classes
    visual_wake_words/vww_model.py        mobilenet_v1()                          3x96x96, 2 classes

What is kept from the reference: every conv's kernel, stride and padding, the conv biases (Keras's default
use_bias=True; every reference conv has one), BatchNorm where the reference has it, ReLU (not ReLU6), Dropout
(ds-cnn), the pooling and the Dense classifier. What is not: the final softmax (nfedge models return logits, the
loss applies it), the L2 kernel regularizers and he_normal initializers (training choices, not layers).

Parameter counts are PyTorch's (`sum(p.numel() for p in model.parameters())`): conv and Linear weights and
biases plus BatchNorm's gamma and beta (2 per channel). That is Keras's "Trainable params" of the same model;
Keras's total adds BatchNorm's moving mean and variance (2 per channel, non-trainable), which PyTorch keeps as
buffers. The arithmetic is in each factory's docstring; tests/models/test_tiny.py pins the numbers.

Keras padding='same' -> PyTorch
-------------------------------
Keras gives ceil(n / stride) outputs and pads total = max((out - 1) * stride + k - n, 0) per axis, the smaller
half before (top/left) and the odd pixel after (bottom/right). With stride 1 and an odd kernel that is (k-1)/2 on
both sides, i.e. Conv2d(padding=k // 2); a 1x1 kernel never pads at any stride. Both are mapped to Conv2d's own
padding. The other convs (3x3 stride 2 in resnet8 and mobilenet, ds-cnn's 10x4 stride 2 stem) pad asymmetrically
and by an amount that depends on the input's parity (3x3/2 on 32: 0 before, 1 after; ds-cnn's stem on 49x10:
4 above, 5 below, 1 left, 1 right), which Conv2d cannot express (it pads both sides alike, and refuses
padding='same' at stride > 1): those are KerasSamePad2d (F.pad computed from the input's size) followed by a
Conv2d with padding 0. So every layer's output shape is the reference's, and so are the values: the sampling grid
is Keras's, not shifted by one pixel as Conv2d(padding=1, stride=2) would be. The pad is one torch.fx node
(torch.fx.wrap, so BatchNorm folding in nfedge.train.perturb works), a constant pad in torch.export (TVM imports
it), and the conv behind it sees the padded map (the dataflow model's ifmap includes the pad).

Integer mode (nfedge.integer) does not take these models: residual adds (resnet8), depthwise convs (ds-cnn,
mobilenet), the Keras pads and ds-cnn's pool window are outside its layer set; the weight-only mode takes them.

Other input sizes: all three run at 1x32x32 (nfedge's padded Fashion-MNIST) and at any size of at least 2x2.
resnet8 and mobilenet end in AdaptiveAvgPool2d(1): the reference's AveragePooling2D over the whole final map is
exactly that at its own input size (8x8 and 3x3). ds-cnn keeps its reference pooling rule, see DSCNN.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from nfedge.models.registry import BASE_MODELS


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def keras_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of Keras padding='same' on one axis of `size`: ceil(size / stride) outputs."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@torch.fx.wrap  # one graph node for torch.fx (integer mode names one refused layer, not its arithmetic)
def keras_same_pad(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    top, bottom = keras_same_padding(x.shape[-2], kernel[0], stride[0])
    left, right = keras_same_padding(x.shape[-1], kernel[1], stride[1])
    return F.pad(x, [left, right, top, bottom])


@torch.fx.wrap
def keras_pool_window(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The part of ds-cnn's final map y that the reference's average pool reads for the input x (see DSCNN)."""
    return y[:, :, : x.shape[-2] // 2, : x.shape[-1] // 2]


class KerasSamePad2d(nn.Module):
    """Zero padding before a Conv2d(padding=0) of `kernel` and `stride` that makes it Keras padding='same'."""

    def __init__(self, kernel: int | tuple[int, int], stride: int | tuple[int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = _pair(kernel), _pair(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return keras_same_pad(x, self.kernel, self.stride)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}"


def conv_same(cin: int, cout: int, kernel: int | tuple[int, int], stride: int | tuple[int, int] = 1,
              groups: int = 1) -> list[tuple[str, nn.Module]]:
    """A Keras Conv2D / DepthwiseConv2D (bias on) with padding='same', as named layers ("pad" only when needed)."""
    k, s = _pair(kernel), _pair(stride)
    fixed = all(kk == 1 or (ss == 1 and kk % 2 == 1) for kk, ss in zip(k, s))  # symmetric for every input size
    conv = nn.Conv2d(cin, cout, k, s, padding=tuple(kk // 2 for kk in k) if fixed else 0, groups=groups)
    return ([] if fixed else [("pad", KerasSamePad2d(k, s))]) + [("conv", conv)]


def conv_bn(cin: int, cout: int, kernel: int | tuple[int, int], stride: int | tuple[int, int] = 1,
            groups: int = 1, relu: bool = True) -> nn.Sequential:
    """conv ('same', with bias) -> BatchNorm2d -> ReLU (the reference's Conv2D, BatchNormalization, Activation)."""
    layers = conv_same(cin, cout, kernel, stride, groups) + [("bn", nn.BatchNorm2d(cout))]
    return nn.Sequential(OrderedDict(layers + ([("relu", nn.ReLU())] if relu else [])))


def depthwise_separable(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """DepthwiseConv2D 3x3 (depth multiplier 1) + BN + ReLU, then pointwise Conv2D 1x1 + BN + ReLU."""
    return nn.Sequential(OrderedDict(dw=conv_bn(cin, cin, 3, stride, groups=cin), pw=conv_bn(cin, cout, 1)))


# --------------------------------------------------------------------------------------------- resnet8


class ResidualStack(nn.Module):
    """One reference stack: y = conv3x3/s -> BN -> ReLU -> conv3x3 -> BN; x = identity, or (when the shape
    changes) a 1x1 conv with stride s and bias but no BatchNorm; out = ReLU(x + y)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, 1, relu=False)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.shortcut(x) + self.conv2(self.conv1(x)))


class ResNet8(nn.Module):
    """stem conv3x3 -> stacks of (f, 1), (2f, 2), (4f, 2) -> global average pool -> Linear(4f)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, filters: int = 16) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, filters, 3)
        self.stack1 = ResidualStack(filters, filters, 1)
        self.stack2 = ResidualStack(filters, 2 * filters, 2)
        self.stack3 = ResidualStack(2 * filters, 4 * filters, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)  # reference: AveragePooling2D(pool_size=8) on the 8x8 map
        self.classifier = nn.Linear(4 * filters, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stack3(self.stack2(self.stack1(self.stem(x))))
        return self.classifier(self.pool(x).flatten(1))


@BASE_MODELS.register("resnet8")
def resnet8(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """MLPerf Tiny image classification ResNet-8 (v1.0 reference, 16/32/64 filters); 78,186 parameters at
    3x32x32 / 10 classes.

    Reference: benchmark/training/image_classification/keras_model.py, resnet_v1_eembc(), at v1.0
    (1beaec082a2c8a0f3a6626f85cd11b502f8c18e3), num_filters = 16, 32, 64. (Since commit 9adec290 the function
    takes conv_filters=26 by default, a wider model; v1.0's 16 is the benchmark's reference.)
    Per layer group, weights + conv bias + BN gamma/beta:
        stem    3x3 3->16:          3*9*16 + 16 = 448;               BN 32                       ->    480
        stack1  3x3 16->16 twice:   2 * (16*9*16 + 16) = 4,640;      BN 2*32 = 64                ->  4,704
        stack2  3x3 16->32 /2:      16*9*32 + 32 = 4,640;  3x3 32->32: 32*9*32 + 32 = 9,248;
                1x1 16->32 /2 (shortcut, no BN): 16*32 + 32 = 544;   BN 2*64 = 128               -> 14,560
        stack3  3x3 32->64 /2:      32*9*64 + 64 = 18,496; 3x3 64->64: 64*9*64 + 64 = 36,928;
                1x1 32->64 /2 (shortcut, no BN): 32*64 + 64 = 2,112; BN 2*128 = 256              -> 57,792
        Dense   64->10:             64*10 + 10 = 650                                             ->    650
        total 480 + 4,704 + 14,560 + 57,792 + 650 = 78,186 (Keras: 78,186 trainable + 480 BN moving stats).
    Conv and Linear weights alone (what the memory image stores): 77,360.
    """
    return ResNet8(in_channels, num_classes)


# ---------------------------------------------------------------------------------------------- ds-cnn


class DSCNN(nn.Module):
    """conv 10x4 /2 -> BN -> ReLU -> Dropout(0.2) -> 4 x depthwise separable (3x3, stride 1) -> Dropout(0.4)
    -> the reference's average pooling -> Linear(64).

    The reference pools with AveragePooling2D(pool_size=(int(H/2), int(W/2))) of the *input* size H x W, stride =
    pool size, 'valid': on the 25x5 map of a 49x10 input that is one 24x5 window, the map's last row is not
    used. forward does exactly that for any input: it keeps the first H//2 x W//2 of the ceil(H/2) x ceil(W/2)
    map (all of it when H and W are even, as at 32x32) and averages it (AdaptiveAvgPool2d(1)).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 12, filters: int = 64, blocks: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, filters, (10, 4), 2)
        self.drop1 = nn.Dropout(0.2)
        self.blocks = nn.Sequential(*[depthwise_separable(filters, filters) for _ in range(blocks)])
        self.drop2 = nn.Dropout(0.4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(filters, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop2(self.blocks(self.drop1(self.stem(x))))
        return self.classifier(self.pool(keras_pool_window(y, x)).flatten(1))


@BASE_MODELS.register("ds-cnn")
def ds_cnn(in_channels: int = 1, num_classes: int = 12) -> nn.Module:
    """MLPerf Tiny keyword spotting DS-CNN (64 filters); 23,756 parameters at 1x49x10 / 12 classes.

    Reference: benchmark/training/keyword_spotting/keras_model.py, get_model() with model_architecture
    'ds_cnn' (the default), label_count 12; input [spectrogram_length, dct_coefficient_count, 1] = 49x10x1 from
    kws_util.py's defaults: 16 kHz, 1000 ms clips, 30 ms windows every 20 ms -> 1 + int((16000 - 480) / 320) = 49
    frames of 10 MFCCs. Per layer group, weights + bias + BN gamma/beta:
        stem      conv 10x4 1->64 /2:   10*4*1*64 + 64 = 2,624;                     BN 128  ->  2,752
        4 blocks  depthwise 3x3 on 64:  9*64 + 64 = 640;  pointwise 1x1 64->64: 64*64 + 64 = 4,160;
                                        BN 2*128 = 256; one block 640 + 4,160 + 256 = 5,056; x4 -> 20,224
        Dense     64->12:               64*12 + 12 = 780                                    ->    780
        total 2,752 + 20,224 + 780 = 23,756 (Keras: 23,756 trainable + 1,152 BN moving stats = 24,908).
    Conv and Linear weights alone: 2,560 + 4 * (576 + 4,096) + 768 = 22,016.
    """
    return DSCNN(in_channels, num_classes)


# ----------------------------------------------------------------------------------- mobilenet-v1-0.25

# (output channels, stride) of the 13 depthwise separable layers (the reference's 2nd to 14th layers)
_MOBILENET_V1: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                                              *[(512, 1)] * 5, (1024, 2), (1024, 1))


class MobileNetV1(nn.Module):
    """conv 3x3 /2 -> 13 depthwise separable layers -> global average pool -> Linear; widths x alpha."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, alpha: float = 0.25) -> None:
        super().__init__()
        cin = int(32 * alpha)
        self.stem = conv_bn(in_channels, cin, 3, 2)
        layers = []
        for cout, stride in _MOBILENET_V1:
            layers.append(depthwise_separable(cin, int(cout * alpha), stride))
            cin = int(cout * alpha)
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)  # reference: AveragePooling2D over the whole (3x3) final map
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))).flatten(1))


@BASE_MODELS.register("mobilenet-v1-0.25")
def mobilenet_v1_025(in_channels: int = 3, num_classes: int = 2) -> nn.Module:
    """MLPerf Tiny visual wake words MobileNetV1, alpha 0.25; 216,322 parameters at 3x96x96 / 2 classes.

    Reference: benchmark/training/visual_wake_words/vww_model.py, mobilenet_v1(): num_filters 8 (32 * 0.25),
    doubled at layers 2, 3, 5, 7 and 13. A depthwise separable layer from C to C' channels has
    depthwise 9C + C, BN 2C, pointwise C*C' + C', BN 2C' = 12C + C*C' + 3C' parameters:
        stem       conv 3x3 3->8 /2:  3*9*8 + 8 = 224; BN 16                                 ->     240
        layer 2    8->16:             96 + 128 + 48                                          ->     272
        layer 3    16->32 /2:         192 + 512 + 96                                         ->     800
        layer 4    32->32:            384 + 1,024 + 96                                       ->   1,504
        layer 5    32->64 /2:         384 + 2,048 + 192                                      ->   2,624
        layer 6    64->64:            768 + 4,096 + 192                                      ->   5,056
        layer 7    64->128 /2:        768 + 8,192 + 384                                      ->   9,344
        layers 8-12 128->128 (x5):    5 * (1,536 + 16,384 + 384) = 5 * 18,304                ->  91,520
        layer 13   128->256 /2:       1,536 + 32,768 + 768                                   ->  35,072
        layer 14   256->256:          3,072 + 65,536 + 768                                   ->  69,376
        Dense      256->2:            256*2 + 2                                              ->     514
        total 240 + 215,568 + 514 = 216,322 (Keras: 216,322 trainable + 5,472 BN moving stats = 221,794).
    Conv and Linear weights alone: 216 + 207,384 (sum of 9C + C*C') + 512 = 208,112.
    """
    return MobileNetV1(in_channels, num_classes, 0.25)
