"""Models for the tests of integer mode's newer operators (issue #23): every operator kind and activation a
model of the MLPerf Tiny kind uses, in one small network."""

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """relu6(bn(conv(x)) + x), the shortcut an nn.Identity."""

    def __init__(self, c):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.shortcut = nn.Identity()
        self.act = nn.ReLU6()
    def forward(self, x):
        return self.act(self.bn(self.conv(x)) + self.shortcut(x))

class EdgeNet(nn.Module):
    """Every newer operator at 1x32x32: a Hardswish table after the stem, an overlapping max pool (3x3, stride 2,
    padding 1), a depthwise conv + ReLU6, a grouped conv + SiLU, a residual add (Identity shortcut) + ReLU6, Dropout,
    AvgPool2d(2), a 1x1 conv + Sigmoid, an asymmetric F.pad, a GELU table, a clamp, a Tanh table, a mean."""

    def __init__(self, cin=1, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(cin, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish())
        self.pool1 = nn.MaxPool2d(3, 2, 1)
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6())
        self.gc = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.SiLU())
        self.block = Block(32)
        self.drop = nn.Dropout(0.1)
        self.pool2 = nn.AvgPool2d(2)
        self.sig = nn.Sequential(nn.Conv2d(32, 32, 1), nn.Sigmoid())
        self.ge = nn.Sequential(nn.Conv2d(32, 16, 3), nn.GELU())
        self.cl = nn.Conv2d(16, 16, 1)
        self.th = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, classes)
    def forward(self, x):
        x = self.pool1(self.stem(x))
        x = self.block(self.gc(self.dw(x)))
        x = self.pool2(self.drop(x))
        x = self.ge(F.pad(self.sig(x), [1, 0, 0, 1]))
        x = torch.clamp(self.cl(x), -0.5, 0.7)
        x = torch.tanh(self.th(x))
        return self.head(x.mean((2, 3)))
