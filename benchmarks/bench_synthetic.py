"""Generation speed of the synthetic benchmark.

    python benchmarks/bench_synthetic.py                  # default size, 2 workers
    python benchmarks/bench_synthetic.py --size tiny --workers 1 2

Generates into a temporary folder (removed afterwards) and prints wall
seconds, images per second, the CPU seconds of this process and its workers
(a figure that other jobs on the machine inflate less than the wall time),
and the speed-up over one worker when both are timed. The target on 2 CPU
cores: default size under 30 s, tiny about 2 s.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from hacnn.data.synthetic import generate_synthetic, read_manifest


def _cpu() -> float:
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def bench(size: str, workers: int, seed: int = 0) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, images) for one generation of ``size``."""
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), _cpu()
        out = generate_synthetic(Path(tmp) / "bench", size=size, workers=workers, seed=seed)
        seconds, cpu = time.perf_counter() - start, _cpu() - cpu
        return seconds, cpu, sum(read_manifest(out)["files"].values())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="default", choices=("tiny", "default", "large"))
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    args = parser.parse_args(argv)
    times = {}
    for workers in args.workers:
        seconds, cpu, images = bench(args.size, workers)
        times[workers] = seconds
        print(f"synthetic {args.size}: {images} images, workers={workers}: {seconds:.1f} s, "
              f"{images / seconds:.0f} images/s ({cpu:.1f} CPU s, "
              f"{cpu / images * 1000:.2f} CPU ms/image)")
    for workers in sorted(times):
        if workers > 1 and 1 in times:
            print(f"speed-up of workers={workers} over workers=1: "
                  f"{times[1] / times[workers]:.2f}x")


if __name__ == "__main__":  # guard: worker processes may re-import this script
    main()
