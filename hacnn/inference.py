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

On a GPU, where a batch's hundreds of small kernels can cost more to launch
than to run, :class:`CUDAGraphFeatures` captures the eval forward once as a
CUDA graph at a fixed batch size and replays it (issue 19)::

    graphed = CUDAGraphFeatures(optimize_for_inference(model.cuda()), batch_size=64)
    feats = graphed(images)                  # (N, 3, H, W), any N -> (N, D) on the GPU
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


class CUDAGraphFeatures(nn.Module):
    """The eval forward of ``net`` captured once as a CUDA graph at ``batch_size`` and replayed.

    Calling it copies the images (any device, dtype or layout) into the
    graph's static input ``batch_size`` at a time, the last batch padded with
    zeros (in eval mode an image's feature depends on that image alone: batch
    norm uses its running statistics), replays the graph and returns a copy
    of the rows that were images: ``(N, 3, H, W) -> (N, D)`` on the model's
    GPU. ``autocast`` (e.g. ``torch.bfloat16``) captures the forward under
    autocast (its weight cache off, as capture requires); a model with bf16
    weights (``optimize_for_inference(model, dtype=torch.bfloat16)``) is fed
    bf16. The graph holds its own memory pool and the model's weights by
    address: move or change the model and capture again. CUDA only: a model
    on another device is one clear error (run the model itself there).
    ``benchmarks/bench_gpu.py --cuda-graphs`` measures it.
    """

    def __init__(self, net: nn.Module, batch_size: int = 64, *, autocast: torch.dtype | None = None,
                 channels_last: bool = True, input_size: tuple[int, int] | None = None,
                 warmup: int = 3) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if net.training:
            raise ValueError("capture an eval-mode model: model.eval() or optimize_for_inference(model)")
        param = next(net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a model on a CUDA device; this one is on {device}. "
                             "Elsewhere run the model itself (e.g. optimize_for_inference(model))")
        h, w = input_size or net.config.input_size
        self.net, self.batch_size, self.autocast = net, batch_size, autocast
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.static_input = torch.zeros((batch_size, 3, h, w), device=device,
                                        dtype=param.dtype).contiguous(memory_format=layout)   # (B, 3, H, W)
        current, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
        side.wait_stream(current)
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(warmup):              # cuDNN's autotuning and lazy set-up, outside the graph
                self._forward()
        current.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_output = self._forward()                                  # (B, D)

    def _forward(self) -> torch.Tensor:
        with torch.autocast("cuda", dtype=self.autocast or torch.float32, enabled=self.autocast is not None,
                            cache_enabled=False):
            return self.net(self.static_input)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        shape = tuple(self.static_input.shape[1:])
        if images.dim() != 4 or tuple(images.shape[1:]) != shape:
            raise ValueError(f"expected images of shape (N, {', '.join(map(str, shape))}), got {tuple(images.shape)}")
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            n = len(chunk)
            self.static_input[:n].copy_(chunk)
            if n < self.batch_size:
                self.static_input[n:].zero_()      # padding: its rows are computed and dropped
            self.graph.replay()
            out.append(self.static_output[:n].clone())
        return torch.cat(out) if out else self.static_output[:0].clone()
