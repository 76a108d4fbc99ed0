"""Convolutional building blocks of HA-CNN (paper Sec. 3, Fig. 2).

The global and local streams are stacks of Inception units (Szegedy et al.):
Inception-A keeps the resolution, Inception-B halves it. Parameter names
match torchreid's ``hacnn.py`` so that checkpoints convert by renaming only.
"""
from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """Conv -> BatchNorm -> ReLU (``act=False`` drops the ReLU)."""

    def __init__(self, in_c: int, out_c: int, k: int, s: int = 1, p: int = 0, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, k, stride=s, padding=p)
        self.bn = nn.BatchNorm2d(out_c)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class InceptionA(nn.Module):
    """Inception-A (Fig. 2, "Inception-A"): four streams of width C/4, stride 1.

    Streams: 1x1 -> 3x3, 1x1 -> 3x3, 1x1 -> 3x3, 3x3 avg-pool -> 1x1.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 4
        self.stream1 = nn.Sequential(ConvBlock(in_channels, mid, 1), ConvBlock(mid, mid, 3, p=1))
        self.stream2 = nn.Sequential(ConvBlock(in_channels, mid, 1), ConvBlock(mid, mid, 3, p=1))
        self.stream3 = nn.Sequential(ConvBlock(in_channels, mid, 1), ConvBlock(mid, mid, 3, p=1))
        self.stream4 = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), ConvBlock(in_channels, mid, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C_in, H, W) -> (B, C_out, H, W)
        return torch.cat([self.stream1(x), self.stream2(x), self.stream3(x), self.stream4(x)], dim=1)


class InceptionB(nn.Module):
    """Inception-B (Fig. 2, "Inception-B"): three streams, stride 2.

    Streams: 1x1 -> 3x3/2 (C/4), 1x1 -> 3x3 -> 3x3/2 (C/4), 3x3 max-pool/2 -> 1x1 (C/2).
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 4
        self.stream1 = nn.Sequential(ConvBlock(in_channels, mid, 1), ConvBlock(mid, mid, 3, s=2, p=1))
        self.stream2 = nn.Sequential(
            ConvBlock(in_channels, mid, 1), ConvBlock(mid, mid, 3, p=1), ConvBlock(mid, mid, 3, s=2, p=1)
        )
        self.stream3 = nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), ConvBlock(in_channels, mid * 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C_in, H, W) -> (B, C_out, H/2, W/2)
        return torch.cat([self.stream1(x), self.stream2(x), self.stream3(x)], dim=1)
