"""Recipes under the same wall-clock budget: which one should be the default?

    python benchmarks/bench_budget.py --budget 20m --seeds 0 1 2        # 3 x 2 x 20 min + evaluations
    python benchmarks/bench_budget.py --dataset market1501 --root ~/data --budget 2h --seeds 0
    python benchmarks/bench_budget.py --quick                           # a check that it runs (~2 min)

Each recipe (default: ``adam``, torchreid's constant Adam 3e-4, and
``adam-cosine``, Adam 1e-3 with warm-up + cosine to 0 and label smoothing
0.1) trains with ``--time-budget`` (hacnn.schedule: the throughput is
measured over the first steps, then the run is planned to end with the
budget) and is evaluated once at the end. It prints, per recipe, Rank-1 and
mAP as mean +- sd over the seeds, with the plan each run made (steps, epochs,
measured seconds per step). Recipes run interleaved by seed, so a machine
that slows down mid-way hurts them alike. ``--quick``: the tiny synthetic
benchmark, a reduced HA-CNN (widths 32/64/96), 20 s per run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, set_threads  # noqa: E402

from hacnn.config import RECIPES  # noqa: E402
from hacnn.experiment import DATASET_NAMES, run_experiment  # noqa: E402
from hacnn.schedule import parse_duration  # noqa: E402

TINY_MODEL = {"channels": (32, 64, 96), "feat_dim": 64, "input_size": (32, 16),
              "local_sizes": ((8, 8), (4, 4), (2, 2))}


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):5.1f} +- {100 * sd:4.1f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipes", nargs="+", default=["adam", "adam-cosine"], choices=sorted(RECIPES))
    p.add_argument("--budget", type=parse_duration, default=None, help="per run (default: 20m; --quick: 20s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--dataset", choices=DATASET_NAMES, default="synthetic")
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--synthetic-size", default=None, help="default: small (--quick: tiny)")
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/bench_budget"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    set_threads(a.threads)
    budget = a.budget or (20.0 if a.quick else 1200.0)
    size = a.synthetic_size or ("tiny" if a.quick else "small")
    print(f"{machine()}; {a.dataset}" + (f" ({size})" if a.dataset == "synthetic" else "")
          + f", {budget:g} s per run, seeds {a.seeds}")
    results: dict[str, list] = {r: [] for r in a.recipes}
    for seed in a.seeds:
        for recipe in a.recipes:
            start = time.perf_counter()
            run = run_experiment(a.dataset, a.out / f"{recipe}-s{seed}", root=a.root, synthetic_size=size,
                                 force=True, model=TINY_MODEL if a.quick else None, device=a.device,
                                 progress=False, verbose=False, recipe=recipe, seed=seed,
                                 time_budget=budget, eval_every=1, workers=a.workers)
            plan = run.trainer.plan
            results[recipe].append(run.final)
            print(f"  {recipe:12s} seed {seed}: Rank-1 {100 * run.final['rank1']:5.1f}%  mAP "
                  f"{100 * run.final['mAP']:5.1f}%  | {plan['total_steps']} steps, {plan['epochs']} epochs "
                  f"at {plan['step_time_s']:.3g} s/step (ends by {plan['bound']}); "
                  f"{time.perf_counter() - start:.0f} s with data and evaluation", flush=True)
    print(f"\n{'recipe':12s} | Rank-1 (%)   | mAP (%)")
    for recipe, rows in results.items():
        print(f"{recipe:12s} | {_mean_sd([r['rank1'] for r in rows])} | {_mean_sd([r['mAP'] for r in rows])}")


if __name__ == "__main__":
    main()
