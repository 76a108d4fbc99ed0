"""Long-run memory check: train many epochs and watch the process's RSS per epoch.

    python benchmarks/bench_long_run.py [--epochs 30] [--workers 1] [--eval-every 5]
                                        [--width 0.25] [--tolerance-mb 50] [--out DIR]

Trains HA-CNN on the tiny synthetic benchmark (generated once into --data,
default a temp folder) with reduced widths (--width x the paper's 128/256/384
channels, 32x16 inputs unless --full-size) through ``run_experiment``, so the
real loaders, sampler, evaluation, checkpoints and logs all run every epoch.
The training log records ``rss_mb`` (resident set size of the training
process) after each epoch; this script prints it, the growth from the early
epochs (median of the 3 after warm-up) to the late ones (median of the last
3), the least-squares slope after warm-up, and a verdict. Warm-up runs
through the first evaluation (epoch --eval-every), which loads the test
split and starts its loader once and so raises RSS a step (~10 MiB). Verdict:
FLAT when the growth stays within --tolerance-mb, else GROWING. Exit code 0 /
1 follows the verdict. Worker processes have their own RSS (not counted).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch


def slope(values: list[float]) -> float:
    """Least-squares slope (units per epoch) of ``values`` against 0, 1, 2, ..."""
    n = len(values)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, statistics.fmean(values)
    return sum((i - mx) * (v - my) for i, v in enumerate(values)) / sum((i - mx) ** 2 for i in range(n))


def verdict(rss: list[float], tolerance_mb: float, warmup: int = 1) -> dict:
    """Early/late medians, growth, slope after ``warmup`` epochs, and ``flat``."""
    steady = rss[warmup:]
    k = max(1, min(3, len(steady) // 3))
    early, late = statistics.median(steady[:k]), statistics.median(steady[-k:])
    return {"early_mb": early, "late_mb": late, "growth_mb": late - early,
            "slope_mb_per_epoch": slope(steady), "flat": late - early <= tolerance_mb}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--workers", type=int, default=1, help="loader processes (default: 1)")
    p.add_argument("--eval-every", type=int, default=5, help="evaluate every N epochs (0: never)")
    p.add_argument("--width", type=float, default=0.25, help="fraction of the paper's channel widths")
    p.add_argument("--full-size", action="store_true", help="160x64 inputs (default: 32x16)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    p.add_argument("--tolerance-mb", type=float, default=50.0)
    p.add_argument("--data", type=Path, help="synthetic data folder (default: a temp folder)")
    p.add_argument("--out", type=Path, help="run folder (default: a temp folder)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)

    from hacnn.experiment import run_experiment

    channels = tuple(max(16, round(args.width * c / 16) * 16) for c in (128, 256, 384))
    model = {"channels": channels, "feat_dim": max(16, round(512 * args.width))}
    if not args.full_size:
        model.update(input_size=(32, 16), local_sizes=((8, 8), (4, 4), (2, 2)))
    with tempfile.TemporaryDirectory(prefix="hacnn-long-run-") as tmp:
        data = args.data or Path(tmp) / "synthetic"
        out = args.out or Path(tmp) / "run"
        print(f"long run: {args.epochs} epochs, tiny synthetic, channels {channels}, "
              f"feat_dim {model['feat_dim']}, input {model.get('input_size', (160, 64))}, "
              f"workers {args.workers}, {args.threads} thread(s), pid {os.getpid()}")
        start = time.perf_counter()
        result = run_experiment("synthetic", out, root=data, synthetic_size="tiny", model=model,
                                epochs=args.epochs, eval_every=args.eval_every, lr=1e-3,
                                workers=args.workers, force=True, progress=False, verbose=False)
        elapsed = time.perf_counter() - start
    rss = [row["rss_mb"] for row in result.history]
    print(f"{'epoch':>5} {'rss MiB':>8} {'loss':>7} {'s/epoch':>8}  mAP")
    for row in result.history:
        m = row.get("mAP")
        print(f"{row['epoch']:>5} {row['rss_mb']:8.1f} {row['loss']:7.3f} {row['epoch_time_s']:8.2f}"
              f"  {'' if m is None else f'{100 * m:.1f}%'}")
    warmup = min(max(1, args.eval_every), max(1, len(rss) // 3))
    v = verdict(rss, args.tolerance_mb, warmup)
    print(f"warm-up: epochs 1-{warmup}; RSS early (median after warm-up) {v['early_mb']:.1f} MiB, late (median of last) "
          f"{v['late_mb']:.1f} MiB: growth {v['growth_mb']:+.1f} MiB, slope "
          f"{v['slope_mb_per_epoch']:+.2f} MiB/epoch; max {max(rss):.1f} MiB; total {elapsed:.0f} s")
    print(f"verdict: {'FLAT' if v['flat'] else 'GROWING'} (tolerance {args.tolerance_mb:.0f} MiB)")
    return 0 if v["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
