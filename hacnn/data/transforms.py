"""Image transforms for HA-CNN: 160x64 inputs, light augmentation.

HA-CNN trains from scratch with little augmentation (Li, Zhu & Gong, CVPR
2018): horizontal flip and a small translation (pad 10 pixels, random crop
back to size), optionally random erasing (Zhong et al., AAAI 2020).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(height: int = 160, width: int = 64, train: bool = True, *,
                     flip: bool = True, pad_crop: bool = True, pad: int = 10,
                     random_erasing: float = 0.0, normalize: bool = True,
                     mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> "v2.Compose":
    """PIL image (or uint8 tensor) -> float tensor ``(3, height, width)``.

    The eval transform (``train=False``) only resizes and normalises, so it
    is deterministic; the train transform adds ``flip``, ``pad_crop`` (pad
    ``pad`` pixels with zeros, then crop a random ``height x width`` window)
    and ``random_erasing``, the probability of erasing (to 0, after
    normalisation) one random rectangle of 2-33 % of the image (Zhong et al.,
    AAAI 2020; ``True``: 0.5, torchreid's default). Values lie in [0, 1]
    before normalisation.
    """
    from torchvision.transforms import v2  # on use: importing torchvision takes seconds

    erase_p = 0.5 if random_erasing is True else float(random_erasing)
    if not 0 <= erase_p <= 1:
        raise ValueError(f"random_erasing is a probability in [0, 1], got {random_erasing!r}")

    steps: list = list(resize_transform(height, width).transforms)
    if train and flip:
        steps.append(v2.RandomHorizontalFlip())
    if train and pad_crop and pad > 0:
        steps += [v2.Pad(pad), v2.RandomCrop((height, width))]
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if normalize:
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
    if train and erase_p > 0:
        steps.append(v2.RandomErasing(p=erase_p, value=0))
    return v2.Compose(steps)


def resize_transform(height: int = 160, width: int = 64) -> "v2.Compose":
    """PIL image -> uint8 tensor ``(3, height, width)``: the first steps of :func:`build_transforms`."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.Resize((height, width), antialias=True)])


def to_tensor() -> "v2.Compose":
    """PIL image -> float tensor in [0, 1] at its own size (no resize, no normalisation)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
