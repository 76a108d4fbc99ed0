"""Convolutional building blocks of HA-CNN (paper Sec. 3, Fig. 2).

The global and local streams are stacks of Inception units (Szegedy et al.):
Inception-A keeps the resolution, Inception-B halves it. Parameter names
match torchreid's ``hacnn.py`` so that checkpoints convert by renaming only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
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


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will record an op on these tensors (grad mode on, one of them requiring grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def is_channels_last(t: torch.Tensor) -> bool:
    """A 4-d tensor stored channels_last (and not also plain contiguous, as when C == 1)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


class _BoxMean(torch.autograd.Function):
    """3x3 average pool (stride 1, zero padding counted) with a depthwise-conv backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.fmt = _layout(x)
        return F.avg_pool2d(x, 3, stride=1, padding=1)

    @staticmethod
    def backward(ctx, grad):
        # the pool's adjoint is the same 3x3 box mean with zero padding
        C = grad.shape[1]
        weight = torch.full((C, 1, 3, 3), 1 / 9, dtype=grad.dtype, device=grad.device)
        return F.conv2d(grad, weight, padding=1, groups=C).contiguous(memory_format=ctx.fmt)


class AvgPool3x3(nn.Module):
    """3x3 average pool, stride 1, zero padding counted: ``nn.AvgPool2d(3, 1, 1)``.

    The forward is ``avg_pool2d`` itself; only the backward differs: the
    pool's adjoint, the same box mean, computed as a depthwise convolution,
    because oneDNN's depthwise kernel is faster on CPU than ``avg_pool2d``'s
    backward in bf16 + channels_last (forward + backward 2.9 vs 7.6 ms at the
    first level, 2 cores; about level in fp32: ``benchmarks/bench_step_parts.py``,
    ``benchmarks/README.md``, "Where the training step's time goes").
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _BoxMean.apply(x) if needs_grad(x) else F.avg_pool2d(x, 3, stride=1, padding=1)


class _MeanKeepLayout(torch.autograd.Function):
    """``x.mean(dims, keepdim=True)`` whose gradient is laid out like ``x``."""

    @staticmethod
    def forward(ctx, x, dims):
        ctx.shape, ctx.n = x.shape, x.shape[2] * x.shape[3] if dims == (2, 3) else x.shape[1]
        ctx.fmt = _layout(x)
        return x.mean(dims, keepdim=True)

    @staticmethod
    def backward(ctx, grad):
        out = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.fmt)
        return out.copy_((grad / ctx.n).expand(ctx.shape)), None


def mean_keep_layout(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``x.mean(dims, keepdim=True)`` over (2, 3) or (1,) of a (B, C, H, W) tensor.

    The same forward; the backward writes the broadcast gradient straight
    into ``x``'s memory layout. ``mean``'s own backward is a contiguous (NCHW)
    tensor, and adding that to the channels_last gradients of ``x``'s other
    uses costs 16x a plain add in bf16 (``benchmarks/README.md``,
    "Where the training step's time goes").
    """
    if dims not in ((2, 3), (1,)):
        raise ValueError(f"mean_keep_layout averages over (2, 3) or (1,), got {dims}")
    return _MeanKeepLayout.apply(x, dims) if needs_grad(x) else x.mean(dims, keepdim=True)


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
        self.stream4 = nn.Sequential(AvgPool3x3(), ConvBlock(in_channels, mid, 1))

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


class RegionBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics are those of each region alone.

    The local stream runs the T regions of a batch as one ``(B*T, C, h, w)``
    batch (rows ``b*T + t``), so a plain batch norm normalises every region
    with the statistics of all T together. torchreid's HACNN runs the regions
    one after another, so each region is normalised with its own batch
    statistics and the running statistics take T momentum updates per batch,
    region 0 first. This module computes exactly that from the batched input
    (``HACNNConfig(local_bn="per_region")``; issue 16 asked whether the
    difference matters: ``benchmarks/README.md``, "The recipe screen"). In
    eval mode, and with ``num_regions=1``, it is a plain batch norm, with the
    same parameters and buffers (state dicts are interchangeable).
    """

    def __init__(self, num_features: int, num_regions: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.num_regions = num_regions

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d, num_regions: int) -> "RegionBatchNorm2d":
        new = cls(bn.num_features, num_regions, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                  track_running_stats=bn.track_running_stats,
                  device=bn.weight.device if bn.affine else None)
        new.load_state_dict(bn.state_dict())
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.num_regions
        if not self.training or T == 1:
            return super().forward(x)
        if x.shape[0] % T:
            raise ValueError(f"RegionBatchNorm2d expects (B*{T}, C, H, W) region batches, got {tuple(x.shape)}")
        parts = []
        for region in x.unflatten(0, (x.shape[0] // T, T)).unbind(1):      # T x (B, C, h, w), in order
            if self.track_running_stats:
                self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            parts.append(nn.functional.batch_norm(
                region, self.running_mean if self.track_running_stats else None,
                self.running_var if self.track_running_stats else None, self.weight, self.bias,
                True, momentum, self.eps))
        out = torch.stack(parts, 1).flatten(0, 1)                          # (B*T, C, h, w)
        if x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def per_region_batch_norms(module: nn.Module, num_regions: int) -> nn.Module:
    """Swap every ``BatchNorm2d`` under ``module`` for a :class:`RegionBatchNorm2d` (in place)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            module.add_module(name, RegionBatchNorm2d.from_batch_norm(child, num_regions))
        else:
            per_region_batch_norms(child, num_regions)
    return module
