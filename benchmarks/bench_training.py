"""CPU training-step speed: hacnn vs torchreid's HACNN (same weights, inputs, threads).

    python benchmarks/bench_training.py [--batch 32] [--threads 2] [--repeats 5] [--compile]

One step = forward in train mode, identity cross-entropy on both heads,
backward, Adam update (lr 3e-4). Paths are timed round-robin in one process.
hacnn's default training path (``TrainConfig()``, ``amp="auto"``) is bf16
autocast + channels_last on a CPU that computes bf16 natively, fp32 +
channels_last elsewhere; the goal's line names the one this machine takes.
Each model steps with its own library's Adam: hacnn's ``build_optimizer``
takes PyTorch's fused kernel, torchreid's ``build_optimizer`` the default
per-parameter loop; one more row, "(Adam loop)", gives hacnn's default path
with torchreid's optimizer, so the model's share of the ratio shows on its own.
``--compile`` adds hacnn's two paths through ``torch.compile`` (inductor;
``TrainConfig(compile=True)``), with the time its first step took (the
compilation of forward and backward) and the images after which that
one-off cost is paid back.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (channels_last_copy as cl, interleaved_rates, machine, set_threads,  # noqa: E402
                    train_step_fn, torchreid_pair)

from hacnn.training import resolve_amp  # noqa: E402

FP32, BF16 = "hacnn fp32 + channels_last", "hacnn bf16 + channels_last"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also time hacnn through torch.compile")
    a = p.parse_args(argv)
    set_threads(a.threads)
    tr, ours = torchreid_pair(num_classes=200)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 3, 160, 64, generator=g)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 200, (a.batch,), generator=g)
    paths = {
        "torchreid fp32": train_step_fn(copy.deepcopy(tr), x, y),
        "torchreid fp32 + channels_last": train_step_fn(cl(tr), x_cl, y),
        "torchreid bf16 + channels_last": train_step_fn(cl(tr), x_cl, y, "bf16"),
        "hacnn fp32 (NCHW)": train_step_fn(copy.deepcopy(ours), x, y, fused=True),
        FP32: train_step_fn(cl(ours), x_cl, y, fused=True),
        BF16: train_step_fn(cl(ours), x_cl, y, "bf16", fused=True),
    }
    default = BF16 if resolve_amp("auto", "cpu") == "bf16" else FP32     # TrainConfig() on this CPU
    loop = f"{default} (Adam loop)"
    paths[loop] = train_step_fn(cl(ours), x_cl, y, "bf16" if default == BF16 else "fp32")
    first_step_s = {}                                  # compiled paths: the first call compiles
    if a.compile:
        for name, amp in ((FP32, "fp32"), (BF16, "bf16")):
            step = train_step_fn(torch.compile(cl(ours)), x_cl, y, amp, fused=True)
            start = time.perf_counter()
            step()
            first_step_s[f"{name} + compile"] = time.perf_counter() - start
            paths[f"{name} + compile"] = step
    rates = interleaved_rates(paths, a.batch, repeats=a.repeats)
    print(f"# CPU training step (Adam, both heads), batch {a.batch}, 160x64 -- {machine()}")
    for k, v in rates.items():
        print(f"{k:42s} {v:8.1f} img/s{'  (default here)' if k == default else ''}")
    for k, first in first_step_s.items():
        eager = k.removesuffix(" + compile")
        ratio = rates[k] / rates[eager]
        gain = 1 / rates[eager] - 1 / rates[k]         # seconds saved per image once compiled
        extra = first - a.batch / rates[k]             # the compilation: the first step less one step
        pays = f"pays back after {extra / gain:,.0f} images" if gain > 0 else "never pays back"
        print(f"ratio {k} / {eager}: {ratio:.2f}x; compilation {extra:.1f} s (first step), {pays}")
    base = rates["torchreid fp32"]
    for k in ("hacnn fp32 (NCHW)", FP32, BF16):
        goal = " (default training path here; goal >= 1.5)" if k == default else ""
        print(f"ratio {k} / torchreid fp32: {rates[k] / base:.2f}x{goal}")
    print(f"ratio {BF16} / torchreid bf16 + channels_last: "
          f"{rates[BF16] / rates['torchreid bf16 + channels_last']:.2f}x")
    fastest = max((k for k in rates if k.startswith("torchreid")), key=rates.get)
    print(f"ratio hacnn default ({default}) / torchreid's fastest path here ({fastest}): "
          f"{rates[default] / rates[fastest]:.2f}x (goal >= 1.5)")
    print(f"ratio {loop} / torchreid's fastest path here: {rates[loop] / rates[fastest]:.2f}x "
          f"(the same optimizer on both sides)")


if __name__ == "__main__":
    main()
