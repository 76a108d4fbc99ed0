"""CPU inference: onnxruntime on the exported graph vs the package's eager and compiled paths.

    python benchmarks/bench_onnx.py [--threads 2] [--batch 64] [--repeats 5] [--no-compile] [--quick]

Same weights (random, with trained-like batch-norm statistics), same inputs,
same threads. Paths: ``optimize_for_inference`` in fp32 (the baseline every
ratio is against, measured in this run) and with bf16 weights where the CPU
computes bf16 natively; ``torch.compile`` of the fastest of those; the model
of ``hacnn.export`` in onnxruntime (CPU provider, all graph optimisations).
Prints batch-1 latency (ms) and batch-``--batch`` throughput (img/s), timed
round-robin (benchmarks/common.py), and how far the ONNX features are from
PyTorch's. ``--quick``: a tiny model and 2 repeats, to check the script runs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_rates, machine, set_threads  # noqa: E402

from hacnn import HACNN  # noqa: E402
from hacnn.export import export_onnx  # noqa: E402
from hacnn.inference import optimize_for_inference  # noqa: E402
from hacnn.training import native_bf16  # noqa: E402

TINY = dict(channels=(32, 64, 96), feat_dim=16, input_size=(32, 16), local_sizes=((8, 8), (4, 4), (2, 2)))
BASELINE = "eager fp32 (optimize_for_inference)"


def build_model(quick: bool) -> HACNN:
    torch.manual_seed(0)
    model = HACNN(751, **(TINY if quick else {})).eval()
    with torch.no_grad():   # non-trivial BN statistics and moving regions, as after training
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        for ha in model.attention:
            ha.hard.fc.weight.normal_(0, 0.05)
    return model


def paths(model, onnx_path: Path, threads: int, compile_: bool):
    """name -> (callable of a (B, 3, H, W) fp32 batch), and compile seconds."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    fast = optimize_for_inference(model)
    cl = lambda x: x.contiguous(memory_format=torch.channels_last)          # noqa: E731
    fns = {BASELINE: lambda x: fast(cl(x))}
    if native_bf16("cpu"):
        fast16 = optimize_for_inference(model, dtype=torch.bfloat16)
        fns["eager bf16 weights (optimize_for_inference)"] = lambda x: fast16(cl(x).to(torch.bfloat16)).float()
    compile_s = None
    if compile_:
        net = fast16 if native_bf16("cpu") else fast
        compiled = torch.compile(net)
        cast = (lambda x: cl(x).to(torch.bfloat16)) if native_bf16("cpu") else cl
        t0 = time.perf_counter()
        with torch.no_grad():
            compiled(cast(torch.randn(2, 3, *model.config.input_size)))
        compile_s = time.perf_counter() - t0
        fns[f"torch.compile ({'bf16' if native_bf16('cpu') else 'fp32'} weights)"] = \
            lambda x: compiled(cast(x)).float()
    fns["onnxruntime fp32 (hacnn.export)"] = lambda x: torch.from_numpy(
        session.run(["features"], {"images": x.numpy()})[0])
    return fns, compile_s


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (~30 s to compile)")
    p.add_argument("--quick", action="store_true", help="tiny model, 2 repeats: checks that it runs")
    a = p.parse_args(argv)
    set_threads(a.threads)
    repeats = 2 if a.quick else a.repeats
    model = build_model(a.quick)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "hacnn.onnx")
        fns, compile_s = paths(model, onnx_path, a.threads, not a.no_compile)
        g = torch.Generator().manual_seed(0)
        results = {}
        with torch.no_grad():
            for batch in (1, a.batch):
                x = torch.randn(batch, 3, *model.config.input_size, generator=g)
                rates = interleaved_rates({k: (lambda f=f: f(x)) for k, f in fns.items()}, batch,
                                          repeats=repeats * (4 if batch == 1 else 1))
                results[batch] = rates
            x = torch.randn(8, 3, *model.config.input_size, generator=g)
            ref = model(x)
            diffs = {k: (f(x).float() - ref).abs().max().item() for k, f in fns.items()}
    print(f"# CPU inference, {'tiny model (--quick)' if a.quick else 'HA-CNN 160x64'}, eval mode -- {machine()}")
    print(f"{'path':48s} {'batch-1 ms':>11s} {'x':>6s} {f'batch-{a.batch} img/s':>16s} {'x':>6s} {'max |diff|':>11s}")
    for k in fns:
        lat, base_lat = 1000 / results[1][k], 1000 / results[1][BASELINE]
        thr, base_thr = results[a.batch][k], results[a.batch][BASELINE]
        print(f"{k:48s} {lat:11.2f} {base_lat / lat:5.2f}x {thr:16.1f} {thr / base_thr:5.2f}x {diffs[k]:11.1e}")
    print(f"ratios: against '{BASELINE}' in this run (latency: baseline ms / path ms); "
          "max |diff|: features vs the eager fp32 model")
    if compile_s is not None:
        print(f"torch.compile: {compile_s:.0f} s to compile")


if __name__ == "__main__":
    main()
