"""Where the training step's time went: each part that was rewritten, old vs new, forward + backward.

    python benchmarks/bench_step_parts.py [--threads 2] [--repeats 15]

At the shapes of a batch-32 training step (160x64 input, 4 regions; the
three levels' inputs), on the default layout (channels_last), in bf16 (the
default path on a CPU with native bf16) and fp32 (elsewhere), every pair
timed round-robin in one process, median of the repeats:

* the crop's two matrix products in float32 (before) vs in the input's dtype;
* the region matrices through the dense (n, n) transformer matrix
  (``dense_region_matrices``, before) vs their four taps (``region_matrices``);
* Inception-A's 3x3 average pool: ``nn.AvgPool2d`` vs ``AvgPool3x3``
  (the same forward, a depthwise-conv backward);
* a mean of a tensor that also feeds a convolution (as in the attention
  modules): ``x.mean`` (its gradient NCHW, added to the conv's channels_last
  one) vs ``mean_keep_layout``;
* Adam's update of HA-CNN's parameters: the per-parameter loop vs the
  fused kernel (``hacnn.training.build_optimizer``).

The whole step with all of them is ``bench_training.py``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_rates, machine, set_threads  # noqa: E402

from hacnn import HACNN  # noqa: E402
from hacnn.attention import HardRegionalAttention, dense_region_matrices, region_matrices  # noqa: E402
from hacnn.blocks import AvgPool3x3, mean_keep_layout  # noqa: E402

CL = torch.channels_last
LEVELS = [(32, 80, 32), (128, 40, 16), (256, 20, 8)]      # (C, H, W) of each level's input, batch 32
CROPS = [(24, 28), (12, 14), (6, 7)]


def median_ms(fns: dict, repeats: int) -> dict:
    """Median milliseconds of each callable, timed round-robin after one warm-up call."""
    return {k: 1e3 / rate for k, rate in interleaved_rates(fns, 1, repeats=repeats).items()}


def fwd_bwd(f, x0: torch.Tensor, *extra: torch.Tensor):
    """A callable: forward ``f(x, *extra)`` on a fresh leaf copy of x0, backward of a weighted sum."""
    def run():
        x = x0.detach().clone().requires_grad_()
        ex = [e.detach().clone().requires_grad_() for e in extra]
        out = f(x, *ex)
        out.backward(torch.ones_like(out))
    return run


def crop_float32(ha: HardRegionalAttention, x, theta, size):
    """The crop as before: both products in float32, the result cast back."""
    B, C, H, W = x.shape
    T, (h, w) = theta.shape[1], size
    a_y = region_matrices(theta[..., 1], ha.scale[1], H, h)
    a_x = region_matrices(theta[..., 0], ha.scale[0], W, w)
    rows = a_y.reshape(B, T * h, H) @ x.float().permute(0, 2, 3, 1).reshape(B, H, W * C)
    return (a_x.reshape(B * T, 1, w, W) @ rows.view(B * T, h, W, C)).permute(0, 3, 1, 2).to(x.dtype)


def parts(dtype: torch.dtype, repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    g = torch.Generator().manual_seed(0)
    ha = HardRegionalAttention(8)
    for lvl, ((C, H, W), size) in enumerate(zip(LEVELS, CROPS)):
        x = torch.randn(32, C, H, W, generator=g).to(dtype).contiguous(memory_format=CL)
        theta = torch.rand(32, 4, 2, generator=g) - 0.5
        auto = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)

        def new_crop(x, t):
            with auto:
                return ha.crop(x, t, size)

        def old_crop(x, t):
            with auto:
                return crop_float32(ha, x, t, size)
        t = median_ms({"old": fwd_bwd(old_crop, x, theta), "new": fwd_bwd(new_crop, x, theta)}, repeats)
        rows.append((f"crop, level {lvl + 1}", t["old"], t["new"]))

        t = median_ms({"old": fwd_bwd(lambda t: dense_region_matrices(t, 0.25, H, size[0]).float(),
                                      theta[..., 1]),
                       "new": fwd_bwd(lambda t: region_matrices(t, 0.25, H, size[0]), theta[..., 1])}, repeats)
        rows.append((f"region matrices (rows), level {lvl + 1}", t["old"], t["new"]))

        t = median_ms({"old": fwd_bwd(nn.AvgPool2d(3, stride=1, padding=1), x),
                       "new": fwd_bwd(AvgPool3x3(), x)}, repeats)
        rows.append((f"3x3 average pool, level {lvl + 1}", t["old"], t["new"]))

        conv = nn.Conv2d(C, C, 1).to(dtype).to(memory_format=CL).requires_grad_(False)

        def mean_old(x):
            return conv(x).sum() + x.mean((2, 3), keepdim=True).sum() + x.mean(1, keepdim=True).sum()

        def mean_new(x):
            return conv(x).sum() + mean_keep_layout(x, (2, 3)).sum() + mean_keep_layout(x, (1,)).sum()
        t = median_ms({"old": fwd_bwd(mean_old, x), "new": fwd_bwd(mean_new, x)}, repeats)
        rows.append((f"two means beside a conv, level {lvl + 1}", t["old"], t["new"]))
    return rows


def adam(repeats: int) -> tuple[str, float, float]:
    g = torch.Generator().manual_seed(0)
    params = list(HACNN(200).parameters())
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    loop = torch.optim.Adam(params, lr=3e-4)
    fused = torch.optim.Adam([p.detach().clone().requires_grad_() for p in params], lr=3e-4, fused=True)
    for p, q in zip(params, fused.param_groups[0]["params"]):
        q.grad = p.grad.clone()
    t = median_ms({"old": loop.step, "new": fused.step}, repeats)
    return "Adam update, 3.1 M parameters (fp32)", t["old"], t["new"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args(argv)
    set_threads(a.threads)
    print(f"# forward + backward, batch 32, channels_last, ms (median of {a.repeats}) -- {machine()}")
    for dtype in (torch.bfloat16, torch.float32):
        rows = parts(dtype, a.repeats)
        print(f"## {str(dtype).removeprefix('torch.')}")
        print(f"{'part':42s} {'before':>8s} {'now':>8s} {'ratio':>7s}")
        for name, old, new in rows:
            print(f"{name:42s} {old:8.2f} {new:8.2f} {old / new:6.1f}x")
        old, new = sum(r[1] for r in rows), sum(r[2] for r in rows)
        print(f"{'sum of the rows above':42s} {old:8.2f} {new:8.2f} {old / new:6.1f}x")
    name, old, new = adam(a.repeats)
    print(f"## optimizer\n{name:42s} {old:8.2f} {new:8.2f} {old / new:6.1f}x")


if __name__ == "__main__":
    main()
