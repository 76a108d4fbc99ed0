"""Harmonious Attention (paper Sec. 3.1).

A Harmonious Attention (HA) module learns, from one level's features, two
complementary kinds of attention:

* **soft** pixel attention (Sec. 3.1-I) = spatial attention (Sec. 3.1-I.1,
  one saliency map shared by all channels) x channel attention (Sec. 3.1-I.2,
  squeeze-and-excitation), fused by a 1x1 conv and a sigmoid;
* **hard** regional attention (Sec. 3.1-II): T translations (t_x, t_y) of
  fixed-scale boxes, the parameters of a spatial transformer that crops T
  horizontal stripes from the level's input for the local branch.

Notebooks 01-04 build each of these inline and check them against this file.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBlock, is_channels_last, mean_keep_layout, needs_grad


class SoftSpatialAttention(nn.Module):
    """Spatial attention (Sec. 3.1-I.1): one (H, W) map shared by all channels.

    Cross-channel average -> 3x3 conv, stride 2 -> bilinear resize back to
    (H, W) -> 1x1 "scaling" conv. Notebook 01.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = ConvBlock(1, 1, 3, s=2, p=1)
        self.conv2 = ConvBlock(1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = mean_keep_layout(x, (1,))                # (B, 1, H, W)
        a = self.conv1(a)                            # (B, 1, H/2, W/2)
        a = F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return self.conv2(a)                         # (B, 1, H, W)


class SoftChannelAttention(nn.Module):
    """Channel attention (Sec. 3.1-I.2): squeeze-and-excitation, reduction r=16.

    Global average pool -> 1x1 conv C->C/r -> 1x1 conv C/r->C. Notebook 02.
    """

    def __init__(self, in_channels: int, reduction: int = 16):
        super().__init__()
        if in_channels % reduction:
            raise ValueError(f"in_channels={in_channels} not divisible by reduction={reduction}")
        self.conv1 = ConvBlock(in_channels, in_channels // reduction, 1)
        self.conv2 = ConvBlock(in_channels // reduction, in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = mean_keep_layout(x, (2, 3))              # (B, C, 1, 1) squeeze
        return self.conv2(self.conv1(a))             # (B, C, 1, 1) excitation


class SoftAttention(nn.Module):
    """Soft spatial-channel attention (Sec. 3.1-I): sigma(conv(S * C)).

    The spatial map (B, 1, H, W) and channel weights (B, C, 1, 1) multiply to a
    full (B, C, H, W) tensor, a 1x1 conv lets them interact, a sigmoid bounds it.
    ``relu=True`` (torchreid's head: conv + BN + ReLU before the sigmoid) puts
    the attention in [0.5, 1), so attention can at most halve a feature;
    ``relu=False`` (conv + BN + sigmoid) uses the full (0, 1) range.
    """

    def __init__(self, in_channels: int, reduction: int = 16, relu: bool = True):
        super().__init__()
        self.spatial = SoftSpatialAttention()
        self.channel = SoftChannelAttention(in_channels, reduction)
        self.conv = ConvBlock(in_channels, in_channels, 1, act=relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.spatial(x) * self.channel(x)        # (B, C, H, W)
        return torch.sigmoid(self.conv(same_layout(a, x)))   # (B, C, H, W) in (0, 1)


def same_layout(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` in ``ref``'s memory format when ``ref`` is channels_last (a broadcast product is not)."""
    return t.contiguous(memory_format=torch.channels_last) if is_channels_last(ref) else t


def stripe_translations(num_regions: int) -> torch.Tensor:
    """Centres (t_x, t_y) of T equal horizontal stripes in [-1, 1] coordinates."""
    ty = -1.0 + (2 * torch.arange(num_regions, dtype=torch.float64) + 1) / num_regions
    return torch.stack([torch.zeros_like(ty), ty], dim=1).float()   # (T, 2)


def _no_autocast(device_type: str):
    """Disable autocast where it exists (the crop chooses its products' dtype itself)."""
    if device_type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _two_taps(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps of source coordinates p: the lower pixel index and the weight of the upper one."""
    i0 = p.floor()
    return i0.long(), p - i0


def region_matrices(t: torch.Tensor, s: float, n: int, m: int) -> torch.Tensor:
    """Interpolation matrices of one axis of the hard-attention crop: (B, T, m, n).

    ``t`` (B, T) are the translations, ``s`` the fixed scale, ``n`` the input
    size and ``m`` the crop size. Row i of the result holds the weights with
    which crop pixel i mixes the n input pixels: first the spatial transformer
    (output pixel r of n samples normalised coordinate s*((2r+1)/n - 1) + t,
    ``align_corners=False``, zero padding), then the resize of n -> m pixels
    (``align_corners=True``). Crop pixel i reads the two transformer pixels
    around its resize coordinate, each of which reads two input pixels, so a
    row has four taps: they are computed for the m rows only and scattered
    into the dense matrix (never an (n, n) transformer matrix). Built in
    float64 so that the matrices are exact to float32 rounding; gradients
    reach t through the bilinear weights, as in ``grid_sample``.
    :func:`dense_region_matrices` builds the same from the definition.
    """
    t = t.double()
    u = torch.arange(m, device=t.device, dtype=torch.float64) * ((n - 1) / max(m - 1, 1))
    r0, f = _two_taps(u)                                               # (m,) resize taps
    r = torch.stack([r0, r0 + 1], dim=-1).double()                     # (m, 2) transformer pixels
    coord = s * ((2 * r + 1) / n - 1) + t[..., None, None]             # (B, T, m, 2) in [-1, 1]
    j0, g = _two_taps(((coord + 1) * n - 1) / 2)                       # input taps of each
    fw = torch.stack([1 - f, f], dim=-1)                               # (m, 2)
    w = torch.stack([fw * (1 - g), fw * g], dim=-1)                    # (B, T, m, 2, 2)
    j = torch.stack([j0, j0 + 1], dim=-1)                              # (B, T, m, 2, 2)
    w = w * ((j >= 0) & (j < n))                                       # zero padding outside
    out = torch.zeros(*t.shape, m, n, device=t.device, dtype=torch.float64)
    out = out.scatter_add(-1, j.clamp(0, n - 1).flatten(-2), w.flatten(-2))
    return out.float()                                                 # (B, T, m, n)


def dense_region_matrices(t: torch.Tensor, s: float, n: int, m: int) -> torch.Tensor:
    """:func:`region_matrices` by their definition, in float64: the full (n, n)
    spatial-transformer matrix of every region, then the (m, n) resize matrix.

    The reference the tests hold the four-tap construction to, and the
    version before it (``benchmarks/bench_step_parts.py`` times the two).
    """
    def bilinear(p: torch.Tensor, size: int) -> torch.Tensor:     # (..., k) coordinates -> (..., k, size)
        i0 = p.floor()
        d = torch.arange(size, device=p.device, dtype=p.dtype) - i0.unsqueeze(-1)
        return (d == 0) * (1 - (p - i0)).unsqueeze(-1) + (d == 1) * (p - i0).unsqueeze(-1)

    t = t.double()
    r = torch.arange(n, device=t.device, dtype=torch.float64)
    coord = s * ((2 * r + 1) / n - 1) + t.unsqueeze(-1)                 # (B, T, n)
    u = torch.arange(m, device=t.device, dtype=torch.float64) * ((n - 1) / max(m - 1, 1))
    return bilinear(u, n) @ bilinear(((coord + 1) * n - 1) / 2, n)     # (B, T, m, n)


class HardRegionalAttention(nn.Module):
    """Hard regional attention (Sec. 3.1-II): T box translations per image.

    Global average pool -> linear -> tanh gives (t_x, t_y) in [-1, 1] for each
    of T regions; the scales (s_w, s_h) are fixed, so each region is a
    horizontal stripe (full width, 1/T height). The linear layer starts at
    zero weights with a bias of atanh(stripe centre), so the regions start
    exactly on the T stripes (torchreid's bias lacks the atanh, which starts
    them at tanh(+-0.75) = +-0.64 instead). ``learnable=False`` keeps the
    regions fixed on the stripes (the "no hard attention" ablation).
    """

    def __init__(self, in_channels: int, num_regions: int = 4,
                 scale: tuple[float, float] = (1.0, 0.25), learnable: bool = True):
        super().__init__()
        self.num_regions = num_regions
        self.scale = (float(scale[0]), float(scale[1]))                 # (s_w, s_h), fixed
        init = stripe_translations(num_regions)                       # (T, 2)
        self.register_buffer("init_theta", init, persistent=False)
        self.fc = nn.Linear(in_channels, 2 * num_regions) if learnable else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.fc is not None:
            nn.init.zeros_(self.fc.weight)
            with torch.no_grad():
                self.fc.bias.copy_(torch.atanh(self.init_theta.clamp(-0.999, 0.999)).flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc is None:
            return self.init_theta.expand(x.shape[0], -1, -1)          # (B, T, 2)
        theta = torch.tanh(self.fc(mean_keep_layout(x, (2, 3)).flatten(1)))   # (B, 2T)
        return theta.view(x.shape[0], self.num_regions, 2)             # (B, T, 2)

    def crop(self, x: torch.Tensor, theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Crop the T regions of every image: (B, C, H, W) -> (B*T, C, *size).

        Computes exactly what torchreid does region by region -- a spatial
        transformer with theta_t = [[s_w, 0, t_x], [0, s_h, t_y]] sampled at
        the input's resolution (bilinear, zero padding, ``align_corners=False``)
        followed by a bilinear resize to ``size`` (``align_corners=True``) --
        but for all regions at once and without the full-resolution
        intermediate: with no rotation both steps are separable linear maps,
        so each crop is ``A_y @ X @ A_x^T`` with small (size x H) and
        (size x W) interpolation matrices (:func:`region_matrices`). Gradients
        reach theta through the interpolation weights, as in ``grid_sample``.
        Rows of the result: images major, regions minor.

        Precision: the matrices are built in float64. Without a gradient
        (features, evaluation, export) both products run in float32, whatever
        ``x``'s dtype, so a bf16 model's crops are exact to float32 before the
        result is rounded to ``x``'s dtype. While training, they run in ``x``'s
        dtype: under bf16 autocast, bf16 matrices with float32 accumulation,
        half the crop's cost at a relative error of a few bf16 ulps
        (``tests/test_model.py``), where the gradient noise of a step is far
        larger.
        """
        B, C, H, W = x.shape
        T, (h, w) = theta.shape[1], size
        dtype = x.dtype if needs_grad(x, theta) else torch.float32          # see "Precision" above
        with _no_autocast(x.device.type):
            a_y = region_matrices(theta[..., 1], self.scale[1], H, h).to(dtype)     # (B, T, h, H)
            a_x = region_matrices(theta[..., 0], self.scale[0], W, w).to(dtype)     # (B, T, w, W)
            if is_channels_last(x):
                # channels_last: (B, H, W, C) is a free view; two matmuls keep that layout
                rows = a_y.reshape(B, T * h, H) @ x.to(dtype).permute(0, 2, 3, 1).reshape(B, H, W * C)
                out = (a_x.reshape(B * T, 1, w, W) @ rows.view(B * T, h, W, C)).permute(0, 3, 1, 2)
            else:
                out = torch.einsum("bthy,bcyx,btwx->btchw", a_y, x.to(dtype), a_x).reshape(B * T, C, h, w)
        return out.to(x.dtype)

    def boxes(self, theta: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Regions as (x0, y0, x1, y1) boxes in input-image pixels: (B, T, 4)."""
        H, W = image_size
        size = theta.new_tensor([W, H])
        centre = (theta.float() + 1) / 2 * size                         # (B, T, 2)
        half = theta.new_tensor(self.scale) * size / 2                  # (2,)
        return torch.cat([centre - half, centre + half], dim=-1)


class HarmoniousAttention(nn.Module):
    """Harmonious Attention module (Sec. 3.1, Fig. 2): soft + hard attention.

    Returns the soft attention (B, C, H, W) (``None`` when switched off) and
    the hard-region translations (B, T, 2). Notebook 04.
    """

    def __init__(self, in_channels: int, num_regions: int = 4, scale=(1.0, 0.25),
                 reduction: int = 16, soft: bool = True, hard: bool = True, relu: bool = True):
        super().__init__()
        self.soft = SoftAttention(in_channels, reduction, relu) if soft else None
        self.hard = HardRegionalAttention(in_channels, num_regions, scale, learnable=hard)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        soft = self.soft(x) if self.soft is not None else None
        return soft, self.hard(x)
