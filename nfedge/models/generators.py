"""NeuralFuse generators G (ConvL/S, DeConvL/S, UNetL/S) and the UIP baseline.

The transformed input is F(x) = clip(x + G(x), -1, 1) (`neuralfuse_transform`); a generator's forward
returns the perturbation G(x), with the input's shape. Layer lists follow REFERENCE section 4
(CB = Conv3x3 s1 p1 + BN + ReLU with conv bias; MP = MaxPool 2; UP = nearest Upsample x2;
DCB = ConvTranspose k4 s2 p1 + BN + ReLU; UNet convs without bias), and at 3x32x32 the parameter
counts are the paper's: ConvL 723,273; ConvS 113,187; DeConvL 647,785; DeConvS 156,777;
UNetL 482,771; UNetS 121,195.

Every "->3" output of the table is the input's channel count, so any in_channels works (1 for
Fashion-MNIST padded to 32x32). The 3-channel CB inside ConvS's decoder is an internal width and stays
3 whatever the input's channel count. Three 2x poolings need H and W divisible by 8; that is checked at
construction. UIP is `UIP`: tanh(P) for one trainable tensor P of shape (1, C, H, W), zeros at start.
"""

from __future__ import annotations

import torch
from torch import nn

from nfedge.errors import NfedgeError
from nfedge.models.registry import GENERATORS


def neuralfuse_transform(generator: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """F(x) = clip(x + G(x), -1, 1): the input the base model sees."""
    return torch.clamp(x + generator(x), -1.0, 1.0)


def _check_size(name: str, in_channels: int, input_size: tuple[int, int], multiple: int = 8) -> tuple[int, int]:
    if in_channels < 1:
        raise NfedgeError(f"{name}: in_channels must be >= 1, got {in_channels}")
    try:
        h, w = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise NfedgeError(f"{name}: input_size must be (H, W), got {input_size!r}") from None
    if h < multiple or w < multiple or h % multiple or w % multiple:
        raise NfedgeError(
            f"{name}: input size {h}x{w} not supported; H and W must be positive multiples of {multiple} "
            f"(the generator pools by 2 three times); pad the input, e.g. 28x28 -> 32x32"
        )
    return h, w


# ----------------------------------------------------------------------------------- Conv / DeConv


def _cb(cin: int, cout: int) -> list[nn.Module]:
    """CB: Conv3x3 s1 p1 (with bias) + BN + ReLU."""
    return [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU()]


def _dcb(cin: int, cout: int) -> list[nn.Module]:
    """DCB: ConvTranspose k4 s2 p1 (with bias, doubles H and W) + BN + ReLU."""
    return [nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.ReLU()]


def _mp() -> nn.Module:
    return nn.MaxPool2d(2)


def _up() -> nn.Module:
    return nn.Upsample(scale_factor=2, mode="nearest")


class EncoderDecoder(nn.Module):
    """encoder -> decoder -> head (a plain stack, no skips): the Conv* and DeConv* generators."""

    def __init__(self, encoder: list[nn.Module], decoder: list[nn.Module], head: list[nn.Module],
                 in_channels: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_size = tuple(input_size)
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)
        self.head = nn.Sequential(*head)

    def forward(self, x):
        return self.head(self.decoder(self.encoder(x)))


def _enc_large(c: int) -> list[nn.Module]:
    return (_cb(c, 32) + _cb(32, 32) + [_mp()]
            + _cb(32, 64) + _cb(64, 64) + [_mp()]
            + _cb(64, 128) + _cb(128, 128) + [_mp()])


def _enc_small(c: int) -> list[nn.Module]:
    return _cb(c, 32) + [_mp()] + _cb(32, 64) + [_mp()] + _cb(64, 64) + [_mp()]


def _conv_head(cin: int, c: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, c, 3, 1, 1), nn.BatchNorm2d(c), nn.Tanh()]


def _deconv_head(cin: int, c: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, c, 4, 2, 1), nn.BatchNorm2d(c), nn.Tanh()]


@GENERATORS.register("ConvL")
def conv_l(in_channels: int = 3, input_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """Conv-L: 6 CB encoder, CB/UP decoder, Conv3x3+BN+tanh head; 723,273 parameters at 3 channels."""
    input_size = _check_size("ConvL", in_channels, input_size)
    dec = (_cb(128, 128) + [_up()] + _cb(128, 128)
           + _cb(128, 64) + [_up()] + _cb(64, 64)
           + _cb(64, 32) + [_up()] + _cb(32, 32))
    return EncoderDecoder(_enc_large(in_channels), dec, _conv_head(32, in_channels), in_channels, input_size)


@GENERATORS.register("ConvS")
def conv_s(in_channels: int = 3, input_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """Conv-S: 3 CB encoder, CB/UP decoder, Conv3x3+BN+tanh head; 113,187 parameters at 3 channels."""
    input_size = _check_size("ConvS", in_channels, input_size)
    dec = _cb(64, 64) + [_up()] + _cb(64, 32) + [_up()] + _cb(32, 3) + [_up()]
    return EncoderDecoder(_enc_small(in_channels), dec, _conv_head(3, in_channels), in_channels, input_size)


@GENERATORS.register("DeConvL")
def deconv_l(in_channels: int = 3, input_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """DeConv-L: Conv-L's encoder, CB/DCB decoder, ConvTranspose+BN+tanh head; 647,785 parameters."""
    input_size = _check_size("DeConvL", in_channels, input_size)
    dec = _cb(128, 128) + _dcb(128, 64) + _cb(64, 64) + _dcb(64, 32) + _cb(32, 32)
    return EncoderDecoder(_enc_large(in_channels), dec, _deconv_head(32, in_channels), in_channels, input_size)


@GENERATORS.register("DeConvS")
def deconv_s(in_channels: int = 3, input_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """DeConv-S: Conv-S's encoder, DCB decoder, ConvTranspose+BN+tanh head; 156,777 parameters."""
    input_size = _check_size("DeConvS", in_channels, input_size)
    dec = _dcb(64, 64) + _dcb(64, 32)
    return EncoderDecoder(_enc_small(in_channels), dec, _deconv_head(32, in_channels), in_channels, input_size)


@GENERATORS.register("ConvT")
def conv_t(in_channels: int = 3, input_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """Conv-T (nfedge, not in the paper): Conv-S's shape at widths 8/16/16, for MCU-size base models.

    The paper's generators are sized for ResNet/VGG bases; in front of a ~100k-weight classifier even
    Conv-S reads more weight memory than the base model and the energy saving turns negative.
    """
    input_size = _check_size("ConvT", in_channels, input_size)
    enc = _cb(in_channels, 8) + [_mp()] + _cb(8, 16) + [_mp()] + _cb(16, 16) + [_mp()]
    dec = _cb(16, 16) + [_up()] + _cb(16, 8) + [_up()] + _cb(8, 8) + [_up()]
    return EncoderDecoder(enc, dec, _conv_head(8, in_channels), in_channels, input_size)


# -------------------------------------------------------------------------------------------- UNet


class DoubleConv(nn.Sequential):
    """(Conv3x3 no bias + BN + ReLU) x 2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        )


class Down(nn.Sequential):
    """MaxPool 2 + DoubleConv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(cin, cout))


class Up(nn.Module):
    """ConvTranspose k2 s2 (cin -> cin/2, with bias), concat with the skip, DoubleConv(cin -> cout).

    The reference pads the upsampled map to the skip's size; with H and W multiples of 8 (checked at
    construction) the sizes always agree, so there is no pad (keeps the graph static for export).
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = DoubleConv(cin, cout)

    def forward(self, x, skip):
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """DoubleConv(w), Down(2w), Down(4w), Down(8w) | Up(4w), Up(2w), Up(w) | Conv1x1 -> C (no BN/tanh)."""

    def __init__(self, in_channels: int, width: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_size = tuple(input_size)
        w = width
        self.inc = DoubleConv(in_channels, w)
        self.down1 = Down(w, 2 * w)
        self.down2 = Down(2 * w, 4 * w)
        self.down3 = Down(4 * w, 8 * w)
        self.up1 = Up(8 * w, 4 * w)
        self.up2 = Up(4 * w, 2 * w)
        self.up3 = Up(2 * w, w)
        self.outc = nn.Conv2d(w, in_channels, 1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        y = self.up1(x4, x3)
        y = self.up2(y, x2)
        y = self.up3(y, x1)
        return self.outc(y)


@GENERATORS.register("UNetL")
def unet_l(in_channels: int = 3, input_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """UNet-L (widths 16/32/64/128); 482,771 parameters at 3 channels."""
    return UNet(in_channels, 16, _check_size("UNetL", in_channels, input_size))


@GENERATORS.register("UNetS")
def unet_s(in_channels: int = 3, input_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """UNet-S (widths 8/16/32/64); 121,195 parameters at 3 channels."""
    return UNet(in_channels, 8, _check_size("UNetS", in_channels, input_size))


@GENERATORS.register("UNetT")
def unet_t(in_channels: int = 3, input_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """UNet-T (nfedge, not in the paper): UNet at widths 4/8/16/32, for MCU-size base models."""
    return UNet(in_channels, 4, _check_size("UNetT", in_channels, input_size))


# --------------------------------------------------------------------------------------------- UIP


class UIP(nn.Module):
    """Universal input perturbation: G(x) = tanh(P) for every input; P (1, C, H, W) starts at zeros."""

    def __init__(self, in_channels: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_size = tuple(input_size)
        self.P = nn.Parameter(torch.zeros(1, in_channels, *self.input_size))

    def forward(self, x):
        return torch.tanh(self.P).expand_as(x)


@GENERATORS.register("UIP")
def uip(in_channels: int = 3, input_size: tuple[int, int] = (32, 32)) -> nn.Module:
    """The UIP baseline (REFERENCE section 3): one trainable perturbation of the input's shape."""
    return UIP(in_channels, _check_size("UIP", in_channels, input_size, multiple=1))
