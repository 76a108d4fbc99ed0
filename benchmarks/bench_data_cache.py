"""Training data speed: the default loader vs the uint8 tensor cache (``--data-cache``).

    python benchmarks/bench_data_cache.py [--size small] [--steps 30] [--repeats 3] [--device cpu]
    python benchmarks/bench_data_cache.py --quick          # tiny synthetic, 3 steps: a check that it runs

Measures, in one process and alternating the paths (A B A B ...), median of ``--repeats``:
(a) the default training loader alone (``build_train_loader``: decode + torchvision
transforms in ``--workers`` processes, default ``hacnn.data.default_workers()``);
(b) the cached tensor path alone (``CachedBatches``: per-sample draws, one gather and
normalisation on the device; "memory" = cache in host memory, "device" = on the GPU);
(c) ``Trainer.train_epoch`` over ``--steps`` batches on the default training path
(``TrainConfig()``: bf16 autocast where native, channels_last) with each, printed
with ratios against (a) and against the JPEG loader's epoch (c, loader: the path
of ``--data-cache none``; the default ``auto`` is the memory cache where it
fits). The cache's build time is printed once. Both paths give the same batches bit for bit
(tests/test_tensor_cache.py), so only the time differs.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, set_threads  # noqa: E402

from hacnn import HACNN  # noqa: E402
from hacnn.config import TrainConfig  # noqa: E402
from hacnn.data import build_train_loader, default_workers  # noqa: E402
from hacnn.data.tensor_cache import CachedBatches, TensorCache  # noqa: E402
from hacnn.experiment import load_dataset  # noqa: E402
from hacnn.training import Trainer, resolve_device  # noqa: E402


class FirstSteps:
    """The first ``steps`` batches of each pass of ``loader`` (keeps its sampler for set_epoch)."""

    def __init__(self, loader, steps: int):
        self.loader, self.steps, self.sampler = loader, steps, loader.sampler

    def __len__(self) -> int:
        return min(self.steps, len(self.loader))

    def __iter__(self):
        return itertools.islice(iter(self.loader), len(self))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_rate(loader, steps: int, device: torch.device) -> float:
    """Images/s of ``steps`` batches after the first (worker start-up not counted)."""
    batches = iter(loader)
    next(batches)
    _sync(device)
    start, n = time.perf_counter(), 0
    for batch in itertools.islice(batches, steps):
        n += len(batch[0])
    _sync(device)
    return n / (time.perf_counter() - start)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--root", type=Path, default=None, help="data root (default: the synthetic cache)")
    p.add_argument("--size", default="small", help="synthetic benchmark size (default: small)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30, help="batches per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: hacnn's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--no-train", action="store_true", help="skip (c), the training epochs")
    p.add_argument("--quick", action="store_true", help="tiny synthetic, 3 steps, 1 repeat (a check)")
    a = p.parse_args(argv)
    if a.quick:
        a.size, a.steps, a.repeats = "tiny", 3, 1
    if a.threads:
        set_threads(a.threads)
    device = resolve_device(a.device)
    workers = default_workers() if a.workers is None else a.workers
    data = load_dataset(a.dataset, a.root, synthetic_size=a.size if a.dataset == "synthetic" else None)
    h, w = 160, 64

    start = time.perf_counter()
    caches = {"memory": TensorCache(data.train, h, w, workers=workers, progress=True)}
    build_s = time.perf_counter() - start
    if device.type != "cpu":
        caches["device"] = TensorCache(data.train, h, w, device=device, workers=workers)

    def loaders() -> dict:
        out = {"loader": build_train_loader(data, a.batch, 4, height=h, width=w, workers=workers, seed=0)}
        for mode, cache in caches.items():
            out[f"cache ({mode})"] = CachedBatches(cache, a.batch, 4, seed=0, device=device)
        return out

    paths = loaders()
    rates: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(a.repeats):
        for name, loader in paths.items():
            rates[name].append(loader_rate(loader, a.steps, device))
    data_rate = {k: statistics.median(v) for k, v in rates.items()}

    train_rate: dict[str, float] = {}
    if not a.no_train:
        cfg = TrainConfig(epochs=10_000, eval_every=0, batch_size=a.batch, workers=workers)
        trainers = {}
        with tempfile.TemporaryDirectory() as out:
            for name, loader in loaders().items():
                torch.manual_seed(0)
                trainers[name] = Trainer(HACNN(data.num_train_pids), FirstSteps(loader, a.steps), cfg,
                                         Path(out) / name.split()[-1].strip("()"), device=device,
                                         progress=False)
                trainers[name].train_loader.steps = 2
                trainers[name].train_epoch()                       # warm-up: workers, kernels
                trainers[name].train_loader.steps = a.steps
            times = {k: [] for k in trainers}
            for _ in range(a.repeats):
                for name, trainer in trainers.items():
                    times[name].append(trainer.train_epoch()["images_per_s"])
        train_rate = {k: statistics.median(v) for k, v in times.items()}

    amp = resolve_amp_name(device)
    print(f"# training data, {a.dataset}" + (f" {a.size}" if a.dataset == "synthetic" else "") +
          f" ({len(data.train)} train images), batch {a.batch}, {h}x{w}, {workers} loader workers, "
          f"{device}, training path {amp} -- {machine()}")
    mib = caches["memory"].nbytes / 2**20
    print(f"cache build: {len(data.train)} images in {build_s:.1f} s ({len(data.train) / build_s:.0f} img/s), "
          f"{mib:.0f} MiB")
    base = data_rate["loader"]
    for name, rate in data_rate.items():
        ratio = "" if name == "loader" else f"   ratio vs (a): {rate / base:.1f}x"
        label = "(a) default loader (decode + transforms)" if name == "loader" else f"(b) {name}"
        print(f"{label:44s} {rate:9.0f} img/s{ratio}")
    if train_rate:
        base = train_rate["loader"]
        for name, rate in train_rate.items():
            ratio = "" if name == "loader" else f"   ratio vs the loader's epoch: {rate / base:.2f}x"
            print(f"{'(c) training epoch, ' + name:44s} {rate:9.1f} img/s{ratio}")
        for mode in caches:
            share = train_rate[f"cache ({mode})"] / data_rate[f"cache ({mode})"]
            print(f"cache ({mode}) share of a training step: {100 * share:.1f} % "
                  "(what a background prefetch could save at most)")


def resolve_amp_name(device: torch.device) -> str:
    from hacnn.training import resolve_amp

    amp = resolve_amp("auto", device)
    return f"{amp} autocast + channels_last" if amp else "fp32 + channels_last"


if __name__ == "__main__":
    main()
