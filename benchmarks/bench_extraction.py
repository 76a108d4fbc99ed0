"""Feature extraction of a whole test set through the data pipeline: where does the time go?

    python benchmarks/bench_extraction.py [--size default] [--workers N] [--threads 2]

Times, on the synthetic benchmark's query + gallery (JPEG decode + resize +
normalise + model): (1) the data pipeline alone (iterating the loaders),
(2) the model alone on the same batches held in memory, (3) the two together
as ``hacnn.evaluation.extract_features`` runs them, and prints images/s and
a profile of the model's top operators. Data loading is not the bottleneck
when (3) is close to (2).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, set_threads  # noqa: E402

from hacnn import HACNN  # noqa: E402
from hacnn.data import build_test_loaders  # noqa: E402
from hacnn.data.loading import default_workers  # noqa: E402
from hacnn.data.synthetic import Synthetic  # noqa: E402
from hacnn.evaluation import extract_features  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="default")
    p.add_argument("--workers", type=int, default=None, help=f"loader processes (default {default_workers()})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    a = p.parse_args(argv)
    set_threads(a.threads)
    workers = default_workers() if a.workers is None else a.workers
    data = Synthetic(size=a.size)
    model = HACNN(data.num_train_pids).eval()
    loaders = build_test_loaders(data, a.batch, workers=workers)
    n = sum(len(l.dataset) for l in loaders)

    t0 = time.perf_counter()
    batches = [b[0] for loader in loaders for b in loader]
    t_data = time.perf_counter() - t0

    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            model(x)
    t_model = time.perf_counter() - t0

    t0 = time.perf_counter()
    for loader in loaders:
        extract_features(model, loader, progress=False)
    t_both = time.perf_counter() - t0

    print(f"# feature extraction, synthetic '{a.size}' query+gallery ({n} images), batch {a.batch}, "
          f"{workers} loader worker(s) -- {machine()}")
    print(f"data pipeline alone (decode + resize + normalise): {n / t_data:8.1f} img/s")
    print(f"model alone (eval, same batches in memory):        {n / t_model:8.1f} img/s")
    print(f"extract_features (both, as evaluation runs them):  {n / t_both:8.1f} img/s "
          f"({100 * t_model / t_both:.0f} % of the model-alone rate)")
    with torch.inference_mode(), torch.profiler.profile() as prof:
        model(batches[0])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
