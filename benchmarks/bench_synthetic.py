"""Generation speed of the synthetic benchmark.

    python benchmarks/bench_synthetic.py                  # default size, 2 workers
    python benchmarks/bench_synthetic.py --size tiny --workers 1 2

Generates into a temporary folder (removed afterwards) and prints wall
seconds, images per second and the speed-up over one worker when both are
timed. The target on 2 CPU cores: default size under 30 s, tiny about 2 s.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from hacnn.data.synthetic import generate_synthetic, read_manifest


def bench(size: str, workers: int, seed: int = 0) -> tuple[float, int]:
    """(seconds, images) for one generation of ``size`` with ``workers``."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = generate_synthetic(Path(tmp) / "bench", size=size, workers=workers, seed=seed)
        seconds = time.perf_counter() - start
        return seconds, sum(read_manifest(out)["files"].values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="default", choices=("tiny", "default", "large"))
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    args = parser.parse_args(argv)
    times = {}
    for workers in args.workers:
        seconds, images = bench(args.size, workers)
        times[workers] = seconds
        print(f"synthetic {args.size}: {images} images, workers={workers}: "
              f"{seconds:.1f} s, {images / seconds:.0f} images/s")
    if 1 in times and len(times) > 1:
        best = min(times, key=times.get)
        print(f"speed-up of workers={best} over workers=1: {times[1] / times[best]:.2f}x")


if __name__ == "__main__":  # guard: worker processes may re-import this script
    main()
