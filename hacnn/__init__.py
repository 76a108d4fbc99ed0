"""hacnn — a reference reproduction of HA-CNN (Li, Zhu & Gong, CVPR 2018).

>>> import torch, hacnn
>>> model = hacnn.HACNN(751).eval()
>>> model(torch.randn(2, 3, 160, 64)).shape
torch.Size([2, 1024])
"""
from .attention import (HardRegionalAttention, HarmoniousAttention, SoftAttention,
                        SoftChannelAttention, SoftSpatialAttention)
from .blocks import ConvBlock, InceptionA, InceptionB
from .config import HACNNConfig
from .model import HACNN, FeatureMaps, HACNNOutput, LevelExplanation
from .zoo import pretrained

__version__ = "0.1.0"

__all__ = [
    "HACNN", "HACNNConfig", "HACNNOutput", "FeatureMaps", "LevelExplanation",
    "ConvBlock", "InceptionA", "InceptionB",
    "SoftSpatialAttention", "SoftChannelAttention", "SoftAttention",
    "HardRegionalAttention", "HarmoniousAttention", "pretrained",
]
