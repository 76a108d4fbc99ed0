"""GPU speed: hacnn vs torchreid's HACNN (same weights, same inputs, one process).

    python benchmarks/bench_gpu.py [--device cuda] [--infer-batches 64 256] [--train-batches 32 64]
    python benchmarks/bench_gpu.py --cuda-graphs --train-batches        # + CUDA-graph inference, batch 64 and 256

Inference (eval mode) and training steps (forward in train mode, identity
cross-entropy on both heads, backward, Adam) for both models in fp32, fp32 +
channels_last and autocast (bf16, fp16 with a GradScaler) + channels_last;
hacnn's inference paths go through ``optimize_for_inference`` (folded batch
norms, fused 1x1 convs). cuDNN autotuning is on for every path; fp32
convolutions use PyTorch's defaults (TF32 on Ampere and later). Each timed call
runs ``--iters`` forwards (or steps) and synchronises; calls are interleaved
(A B C A B C ...) and the median is kept. Also prints the card, the largest
feature difference between the models in full fp32 (TF32 off), and the peak
GPU memory of one batch-64 inference and training step.

``--cuda-graphs`` adds hacnn's inference through ``CUDAGraphFeatures`` (the
``optimize_for_inference`` forward captured once per batch size and
precision as a CUDA graph and replayed; each call includes copying the batch
into the graph's input and its features out), at each ``--infer-batches``
size (default 64 and 256), and its largest feature difference from the eager
forward in full fp32 (TF32 off).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import AMP, channels_last_copy as cl, interleaved_rates, train_step_fn, torchreid_pair  # noqa: E402

from hacnn.inference import CUDAGraphFeatures, optimize_for_inference  # noqa: E402

NUM_CLASSES = 751


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def infer_fn(model, x, amp, iters: int, device):
    def run():
        with torch.no_grad(), torch.autocast(device.type, dtype=AMP[amp] or torch.float32,
                                             enabled=AMP[amp] is not None):
            for _ in range(iters):
                model(x)
        _sync(device)
    return run


def peak_mib(fn, device) -> float:
    if device.type != "cuda":
        return float("nan")
    fn()                                   # warm-up: cuDNN workspaces, Adam state
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--infer-batches", type=int, nargs="*", default=[64, 256])
    p.add_argument("--train-batches", type=int, nargs="*", default=[32, 64])
    p.add_argument("--iters", type=int, default=10, help="forwards (or steps) per timed call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time hacnn's inference as a replayed CUDA graph (hacnn.inference.CUDAGraphFeatures)")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    if a.cuda_graphs and dev.type != "cuda":
        p.error("--cuda-graphs needs a CUDA --device")
    torch.backends.cudnn.benchmark = True
    tr, ours = torchreid_pair(NUM_CLASSES)
    tr.use_gpu = dev.type == "cuda"        # torchreid moves its crop parameters with .cuda()
    tr, ours = tr.to(dev).eval(), ours.to(dev).eval()
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        card = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}"
        card += f", torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    else:
        card = f"{a.device}, torch {torch.__version__}"
    print(f"# GPU benchmark -- {card}", flush=True)

    # Features: full fp32 (TF32 off) on the device; bf16/fp16 paths vs that.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 160, 64, generator=g).to(dev)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    fast = optimize_for_inference(ours)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        ref, f32 = tr(x), fast(x_cl)
        print(f"max |hacnn fp32 - torchreid fp32| feature (TF32 off): {(f32 - ref).abs().max().item():.2e}")
        for amp in ("bf16", "fp16"):
            with torch.autocast(dev.type, dtype=AMP[amp]):
                f = fast(x_cl).float()
            cos = F.cosine_similarity(f, f32, dim=1)
            print(f"hacnn {amp} autocast vs fp32 feature cosine: min {cos.min().item():.5f}, "
                  f"max |diff| {(f - f32).abs().max().item():.2e}")
        if a.cuda_graphs:
            f = CUDAGraphFeatures(fast, len(x_cl))(x_cl)
            print(f"max |hacnn CUDA graph - eager| fp32 feature (TF32 off): {(f - f32).abs().max().item():.2e}")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

    results = {}
    for b in a.infer_batches:
        x = torch.randn(b, 3, 160, 64, generator=g).to(dev)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        tr_cl = cl(tr)
        paths = {
            "torchreid fp32": infer_fn(tr, x, "fp32", a.iters, dev),
            "torchreid fp32 + channels_last": infer_fn(tr_cl, x_cl, "fp32", a.iters, dev),
            "torchreid bf16 autocast + channels_last": infer_fn(tr_cl, x_cl, "bf16", a.iters, dev),
            "torchreid fp16 autocast + channels_last": infer_fn(tr_cl, x_cl, "fp16", a.iters, dev),
            "hacnn eager fp32": infer_fn(ours, x, "fp32", a.iters, dev),
            "hacnn fp32 (optimize_for_inference)": infer_fn(fast, x_cl, "fp32", a.iters, dev),
            "hacnn bf16 autocast + optimize_for_inference": infer_fn(fast, x_cl, "bf16", a.iters, dev),
            "hacnn fp16 autocast + optimize_for_inference": infer_fn(fast, x_cl, "fp16", a.iters, dev),
        }
        if a.cuda_graphs:         # the precision is captured in the graph: called outside autocast
            for amp in AMP:
                graphed = CUDAGraphFeatures(fast, b, autocast=AMP[amp])
                paths[f"hacnn {amp} CUDA graph (optimize_for_inference)"] = infer_fn(graphed, x_cl, "fp32",
                                                                                  a.iters, dev)
        results[("inference", b)] = interleaved_rates(paths, b * a.iters, repeats=a.repeats, warmup=2)
        _report("inference", b, results[("inference", b)])
        if a.cuda_graphs:
            rates = results[("inference", b)]
            for amp in AMP:
                eager = next(k for k in rates if k.startswith(f"hacnn {amp}") and "optimize_for_inference" in k)
                print(f"  ratio {amp} CUDA graph / eager (optimize_for_inference): "
                      f"{rates[f'hacnn {amp} CUDA graph (optimize_for_inference)'] / rates[eager]:.2f}x")

    y_all = torch.randint(0, NUM_CLASSES, (max(a.train_batches),), generator=g).to(dev)
    for b in a.train_batches:
        x = torch.randn(b, 3, 160, 64, generator=g).to(dev)
        x_cl, y = x.contiguous(memory_format=torch.channels_last), y_all[:b]
        paths = {}
        for name, model in (("torchreid", tr), ("hacnn", ours)):
            paths[f"{name} fp32"] = train_step_fn(copy.deepcopy(model), x, y, "fp32", a.iters)
            paths[f"{name} fp32 + channels_last"] = train_step_fn(cl(model), x_cl, y, "fp32", a.iters)
            for amp in ("bf16", "fp16"):
                paths[f"{name} {amp} autocast + channels_last"] = train_step_fn(cl(model), x_cl, y, amp, a.iters)
        results[("training step", b)] = interleaved_rates(paths, b * a.iters, repeats=a.repeats, warmup=2)
        _report("training step", b, results[("training step", b)])

    x = torch.randn(64, 3, 160, 64, generator=g).to(dev)
    x_cl, y = x.contiguous(memory_format=torch.channels_last), torch.randint(0, NUM_CLASSES, (64,), generator=g).to(dev)
    print("# peak GPU memory added by one batch-64 call (torch allocator, MiB)")
    for name, model, fm in (("torchreid", tr, cl(tr)), ("hacnn", ours, fast)):
        inf = peak_mib(infer_fn(fm, x_cl, "bf16", 1, dev), dev)
        step = {amp: peak_mib(train_step_fn(cl(model), x_cl, y, amp), dev) for amp in ("fp32", "bf16")}
        print(f"{name:10s} inference bf16 + channels_last {inf:7.0f}   train step fp32 + channels_last "
              f"{step['fp32']:7.0f}   bf16 + channels_last {step['bf16']:7.0f}")


def _report(what: str, batch: int, rates: dict) -> None:
    print(f"# {what}, batch {batch}, 160x64")
    for k, v in rates.items():
        print(f"  {k:48s} {v:9.0f} img/s")
    tr_best = max(v for k, v in rates.items() if k.startswith("torchreid"))
    best_name = max((k for k in rates if k.startswith("hacnn")), key=rates.get)
    print(f"  ratio hacnn fastest ({best_name}) / torchreid fastest: {rates[best_name] / tr_best:.2f}x")
    for amp in ("bf16", "fp16"):
        tk = f"torchreid {amp} autocast + channels_last"
        hk = next(k for k in rates if k.startswith(f"hacnn {amp} autocast"))
        print(f"  ratio {amp} autocast + channels_last hacnn / torchreid: {rates[hk] / rates[tk]:.2f}x")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
