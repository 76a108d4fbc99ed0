"""A faster, numerically equivalent HA-CNN for inference.

``optimize_for_inference(model)`` returns an eval-only copy of a trained
:class:`hacnn.HACNN` that computes the same features (to float32 rounding)
with fewer, larger kernels:

* every Conv -> BatchNorm pair is folded into one convolution
  (w' = w * gamma / sigma, b' = (b - mu) * gamma / sigma + beta);
* the parallel 1x1 convolutions that open the streams of an Inception unit
  read the same input, so they become one convolution whose output is split
  (three in Inception-A, two in Inception-B), and Inception-A's three 3x3
  convolutions, each on its own slice, become one grouped convolution;
* weights and activations use ``channels_last``, the layout oneDNN's CPU
  kernels (and cuDNN's tensor-core kernels) prefer;
* optionally the weights are stored in bf16 (``dtype=torch.bfloat16``).

The hard-attention crops are already batched and separable in the model
itself (``HardRegionalAttention.crop``) and keep the channels_last layout.
``benchmarks/bench_inference.py`` measures this against torchreid's HACNN.
The fastest CPU path measured there (1.85x torchreid's fastest, 2 cores with
AVX-512 bf16) adds ``torch.compile``, which pays for its ~30 s of compilation
after some 26,000 images::

    fast = torch.compile(optimize_for_inference(model, dtype=torch.bfloat16))
    feats = fast(images.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .blocks import ConvBlock, InceptionA, InceptionB


def fold_conv_bn(block: ConvBlock) -> nn.Conv2d:
    """One Conv2d equal to conv -> BN (eval statistics) of a ConvBlock."""
    conv, bn = block.conv, block.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)                  # (C_out,)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, groups=conv.groups, bias=True, device=conv.weight.device)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def _concat_convs(convs: list[nn.Conv2d], groups: int = 1) -> nn.Conv2d:
    """Stack convolutions along the output channels (groups > 1: each on its own input slice)."""
    c0 = convs[0]
    out = nn.Conv2d(c0.in_channels * (groups if groups > 1 else 1), sum(c.out_channels for c in convs),
                    c0.kernel_size, c0.stride, c0.padding, groups=groups, bias=True, device=c0.weight.device)
    with torch.no_grad():
        out.weight.copy_(torch.cat([c.weight for c in convs]))
        out.bias.copy_(torch.cat([c.bias for c in convs]))
    return out


class _ConvReLU(nn.Sequential):
    def __init__(self, conv: nn.Conv2d):
        super().__init__(conv, nn.ReLU(inplace=True))


def _fold(block: ConvBlock) -> nn.Module:
    conv = fold_conv_bn(block)
    return _ConvReLU(conv) if isinstance(block.act, nn.ReLU) else conv


class FusedInceptionA(nn.Module):
    """Inception-A with one 1x1 conv for streams 1-3 and one grouped 3x3 conv."""

    def __init__(self, m: InceptionA):
        super().__init__()
        self.mid = m.stream1[0].conv.out_channels
        self.reduce = _ConvReLU(_concat_convs([fold_conv_bn(s[0]) for s in (m.stream1, m.stream2, m.stream3)]))
        self.spatial = _ConvReLU(_concat_convs([fold_conv_bn(s[1]) for s in (m.stream1, m.stream2, m.stream3)],
                                               groups=3))
        self.pool = nn.Sequential(m.stream4[0], _fold(m.stream4[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.spatial(self.reduce(x)), self.pool(x)], dim=1)


class FusedInceptionB(nn.Module):
    """Inception-B with one 1x1 conv for streams 1-2."""

    def __init__(self, m: InceptionB):
        super().__init__()
        self.mid = m.stream1[0].conv.out_channels
        self.reduce = _ConvReLU(_concat_convs([fold_conv_bn(m.stream1[0]), fold_conv_bn(m.stream2[0])]))
        self.down1 = _fold(m.stream1[1])
        self.stream2 = nn.Sequential(_fold(m.stream2[1]), _fold(m.stream2[2]))
        self.pool = nn.Sequential(m.stream3[0], _fold(m.stream3[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.reduce(x).split(self.mid, dim=1)
        return torch.cat([self.down1(a), self.stream2(b), self.pool(x)], dim=1)


def _replace(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, InceptionA):
            setattr(module, name, FusedInceptionA(child))
        elif isinstance(child, InceptionB):
            setattr(module, name, FusedInceptionB(child))
        elif isinstance(child, ConvBlock):
            setattr(module, name, _fold(child))
        else:
            _replace(child)


@torch.no_grad()
def optimize_for_inference(model: nn.Module, channels_last: bool = True,
                           dtype: torch.dtype | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` with folded BN, fused 1x1 convs and channels_last.

    ``dtype=torch.bfloat16`` also stores the weights in bf16 (feed it bf16
    images): faster than autocast, which re-casts every weight on every call;
    the hard-attention crops still run in float32. The copy is for inference
    only (its batch norms are gone); the original model is left untouched.
    """
    fast = copy.deepcopy(model).eval()
    _replace(fast)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    if dtype is not None:
        fast = fast.to(dtype)
    return fast.requires_grad_(False)
