"""CPU inference speed: hacnn vs torchreid's HACNN, same weights, same inputs, same threads.

    python benchmarks/bench_inference.py [--batch 64] [--threads 2] [--repeats 5] [--compile]

Prints images/s of each path, the ratios the speed issue asks for, how far
our features are from torchreid's (fp32) and from our own fp32 (bf16), and
the peak memory (RSS) of one batch-64 forward in a fresh process per model.
"""
from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_rates, machine, peak_rss_mib, reset_peak_rss_mib, set_threads, torchreid_pair  # noqa: E402

from hacnn.inference import optimize_for_inference  # noqa: E402


def _memory_child(which: str, batch: int, train: bool) -> None:
    """Runs in a fresh process: peak RSS added by one forward (+ backward when train)."""
    tr, ours = torchreid_pair()
    model = {"torchreid": tr, "hacnn": ours, "hacnn-fast": optimize_for_inference(ours)}[which]
    x = torch.randn(batch, 3, 160, 64)
    if which == "hacnn-fast":
        x = x.contiguous(memory_format=torch.channels_last)
    base = reset_peak_rss_mib()
    if train:
        model.train()
        out = model(x)
        y = torch.randint(0, 751, (batch,))
        (F.cross_entropy(out[0], y) + F.cross_entropy(out[1], y)).backward()
    else:
        model.eval()
        with torch.no_grad():
            model(x)
    print(f"{peak_rss_mib() - base:.0f}")


def memory(which: str, batch: int, train: bool) -> str:
    cmd = [sys.executable, __file__, "--memory-child", which, "--batch", str(batch)] + (["--train"] if train else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    return out[-1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    p.add_argument("--memory-child", choices=["torchreid", "hacnn", "hacnn-fast"], help=argparse.SUPPRESS)
    p.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    set_threads(a.threads)
    if a.memory_child:
        return _memory_child(a.memory_child, a.batch, a.train)

    tr, ours = torchreid_pair()
    tr.eval(), ours.eval()
    x = torch.randn(a.batch, 3, 160, 64, generator=torch.Generator().manual_seed(0))
    x_cl = x.contiguous(memory_format=torch.channels_last)
    tr_cl = copy.deepcopy(tr).to(memory_format=torch.channels_last)
    fast = optimize_for_inference(ours)                     # fp32, folded BN, fused convs, channels_last
    fast16 = optimize_for_inference(ours, dtype=torch.bfloat16)
    x16 = x_cl.to(torch.bfloat16)
    bf16 = lambda f: (lambda: _autocast(f))                 # noqa: E731

    paths = {
        "torchreid fp32": lambda: tr(x),
        "torchreid fp32 channels_last": lambda: tr_cl(x_cl),
        "torchreid bf16 + channels_last": bf16(lambda: tr_cl(x_cl)),
        "hacnn eager fp32": lambda: ours(x),
        "hacnn fp32 (default: optimize_for_inference)": lambda: fast(x_cl),
        "hacnn bf16 autocast + optimize_for_inference": bf16(lambda: fast(x_cl)),
        "hacnn bf16 weights (optimize_for_inference dtype=bf16)": lambda: fast16(x16),
    }
    compile_s = None
    if a.compile:
        compiled = torch.compile(fast16)
        with torch.no_grad():
            t0 = time.perf_counter()
            compiled(x16)                                   # compiles (inductor, C++ kernels)
            compile_s = time.perf_counter() - t0
        paths["hacnn bf16 weights + torch.compile"] = lambda: compiled(x16)
    with torch.no_grad():
        rates = interleaved_rates(paths, a.batch, repeats=a.repeats)
        ref = tr(x)
        f32 = fast(x_cl)
        b16 = fast16(x16).float()

    print(f"# CPU inference, batch {a.batch}, 160x64, eval mode -- {machine()}")
    for k, v in rates.items():
        print(f"{k:50s} {v:8.1f} img/s")
    tr_fast = max(rates["torchreid fp32 channels_last"], rates["torchreid bf16 + channels_last"])
    ours_fast = max(v for k, v in rates.items() if k.startswith("hacnn bf16"))
    print(f"ratio default fp32 path / torchreid fp32:        {rates['hacnn fp32 (default: optimize_for_inference)'] / rates['torchreid fp32']:.2f}x (goal >= 1.5)")
    print(f"ratio fastest hacnn / fastest torchreid:          {ours_fast / tr_fast:.2f}x (goal >= 1.5)")
    if compile_s is not None:
        saved = 1 / rates["hacnn bf16 weights (optimize_for_inference dtype=bf16)"] - \
            1 / rates["hacnn bf16 weights + torch.compile"]
        print(f"torch.compile: {compile_s:.0f} s to compile; pays off after ~{compile_s / saved:,.0f} images")
    print(f"max |hacnn fp32 - torchreid fp32| feature:        {(f32 - ref).abs().max().item():.2e} (goal <= 1e-4)")
    cos = F.cosine_similarity(b16, f32, dim=1)
    print(f"bf16-weights vs fp32 feature cosine similarity:   min {cos.min().item():.5f}, mean {cos.mean().item():.5f}")
    for train in (False, True):
        mode = "train step" if train else "inference"
        mem = {w: memory(w, a.batch, train) for w in (["torchreid", "hacnn"] + ([] if train else ["hacnn-fast"]))}
        print(f"peak RSS added by one batch-{a.batch} {mode}: " + ", ".join(f"{k} {v} MiB" for k, v in mem.items()))


def _autocast(f):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return f()


if __name__ == "__main__":
    main()
