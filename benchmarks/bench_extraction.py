"""Feature extraction of a whole test set through the data pipeline: where does the time go, what does bf16 cost?

    python benchmarks/bench_extraction.py --weights runs/cache/synthetic-<hash>/last.pth
    python benchmarks/bench_extraction.py [--size default] [--workers N] [--threads 2] [--batch 128]

On the synthetic benchmark's query + gallery (JPEG decode + resize +
normalise + model), times

1. the data pipeline alone (iterating the loaders, ``--workers`` processes),
2. the model alone on the same batches held in memory (the default
   evaluation path: ``optimize_for_inference``, fp32, channels_last),
3. the two together as ``hacnn.evaluation.extract_features`` runs them,
4. the same with bf16 autocast (``amp=True``),

and prints images/s, the share of the model-alone rate that the full
pipeline keeps (data loading is not the bottleneck when it is close to
100 %), a profile of the model's top operators, and the accuracy cost of
bf16: feature cosine similarity to fp32 and the Rank-1 / mAP change. With
``--weights`` (a trained checkpoint, e.g. notebook 06's run) the mAP change
is meaningful; without it the model has random weights and only the speed is.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, set_threads  # noqa: E402

from hacnn import HACNN  # noqa: E402
from hacnn.checkpoint import load_model  # noqa: E402
from hacnn.data import build_test_loaders  # noqa: E402
from hacnn.data.loading import default_workers  # noqa: E402
from hacnn.data.synthetic import Synthetic  # noqa: E402
from hacnn.evaluation import evaluate_features, extract_features  # noqa: E402
from hacnn.inference import optimize_for_inference  # noqa: E402


def extract_all(model, loaders, **kw):
    """(query, gallery) features and labels, and the seconds both took."""
    t0 = time.perf_counter()
    out = [extract_features(model, loader, progress=False, **kw) for loader in loaders]
    return out, time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, help="trained hacnn checkpoint (default: random weights)")
    p.add_argument("--size", default="default", help="synthetic benchmark size (default: default)")
    p.add_argument("--workers", type=int, default=None, help=f"loader processes (default {default_workers()})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    a = p.parse_args(argv)
    set_threads(a.threads)
    workers = default_workers() if a.workers is None else a.workers
    data = Synthetic(size=a.size)
    model = (load_model(a.weights) if a.weights else HACNN(data.num_train_pids)).eval()
    fast = optimize_for_inference(model)
    loaders = build_test_loaders(data, a.batch, workers=workers)
    n = sum(len(loader.dataset) for loader in loaders)

    t0 = time.perf_counter()
    batches = [b[0].contiguous(memory_format=torch.channels_last) for loader in loaders for b in loader]
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            fast(x)
    t_model = time.perf_counter() - t0
    (q32, g32), t_both = extract_all(model, loaders)
    (q16, g16), t_bf16 = extract_all(model, loaders, amp=True)

    print(f"# feature extraction, synthetic '{a.size}' query+gallery ({n} images), batch {a.batch}, "
          f"{workers} loader worker(s), weights: {a.weights or 'random'} -- {machine()}")
    print(f"data pipeline alone (decode + resize + normalise): {n / t_data:8.1f} img/s")
    print(f"model alone (fp32, optimize_for_inference):        {n / t_model:8.1f} img/s")
    print(f"extract_features fp32 (both, as evaluation runs):  {n / t_both:8.1f} img/s "
          f"({100 * t_model / t_both:.0f} % of the model-alone rate)")
    print(f"extract_features bf16 autocast (amp=True):         {n / t_bf16:8.1f} img/s "
          f"({t_both / t_bf16:.2f}x fp32)")

    cos = F.cosine_similarity(torch.cat([q16[0], g16[0]]), torch.cat([q32[0], g32[0]]), dim=1)
    print(f"bf16 vs fp32 feature cosine similarity: min {cos.min().item():.5f}, mean {cos.mean().item():.6f}")
    res = {}
    for name, (q, g) in (("fp32", (q32, g32)), ("bf16", (q16, g16))):
        res[name] = evaluate_features(q[0], g[0], q[1], g[1], q[2], g[2])
        print(f"{name}: Rank-1 {100 * res[name].rank(1):6.2f} %   mAP {100 * res[name].mAP:6.2f} %")
    print(f"bf16 - fp32: Rank-1 {100 * (res['bf16'].rank(1) - res['fp32'].rank(1)):+.2f} points, "
          f"mAP {100 * (res['bf16'].mAP - res['fp32'].mAP):+.2f} points (goal: |mAP change| <= 0.2)")

    with torch.inference_mode(), torch.profiler.profile() as prof:
        fast(batches[0])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
