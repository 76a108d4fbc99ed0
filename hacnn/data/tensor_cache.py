"""Training images decoded once into a uint8 tensor, augmented as batched tensor ops.

The default loader (:func:`hacnn.data.build_train_loader`) decodes every JPEG
and runs the torchvision transforms again in every epoch. :class:`TensorCache`
decodes each training image once, resized exactly as the train transform
resizes it (its first steps, :func:`hacnn.data.transforms.resize_transform`),
into one ``(N, 3, H, W)`` uint8 tensor (Market-1501's 12,936 training images
at 160x64: 397 MB), in host memory or on the training device (issue 19).
:class:`CachedBatches` then follows the same identity-sampler plan and draws
each sample's flip, translation and random erasing with the train
transform's own parameter code from the same per-sample seed (``(seed,
epoch, position, index)``, :func:`hacnn.data.loading.sample_seed`); it
applies them to the whole batch as one gather and one normalisation, on the
training device. The train transform resizes first and its flip, zero-pad
and crop only move uint8 pixels, so caching the resized images is exact and
the batches equal the JPEG loader's bit for bit: caching is a
speed setting (``TrainConfig.data_cache``; by default ``"auto"``, host
memory where the cache fits) that leaves a run's numbers unchanged,
whatever the batch, world size or (absent) worker count.

The cache is stored NCHW (what the resize yields) and a batch is cropped
and flipped by one ``torch.gather`` over each image's flattened pixels, then
normalised NCHW and made channels_last. Measured on 2,000 cached images at
160x64, batch 32, one thread of a shared CPU: this gather 2.3 ms per batch;
advanced indexing ``images[b, :, rows, cols]``, which yields channels_last
directly, 9 ms from NCHW and 12 ms from NHWC storage; the float conversion
and normalisation ~5 ms; the per-sample draws 2.3 ms (17 ms when seeded
through ``torch.manual_seed``, which also visits every other device).
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..config import DATA_CACHES as CACHE_MODES
from ..distributed import get_rank, get_world_size
from .base import Item, ReIDDataset
from .loading import EpochKeyedSampler, ImageDataset, _items, _loader, build_train_loader, sample_seed
from .transforms import build_transforms, resize_transform

MEMORY_FRACTION = 0.5       # the cache may take at most this share of the free memory where it goes


class CacheMemoryWarning(UserWarning):
    """The image cache does not fit where it was asked for (the numbers are in the message)."""


def cache_bytes(num_images: int, height: int, width: int) -> int:
    """Bytes of a uint8 cache of ``num_images`` RGB images of ``height x width``."""
    return num_images * 3 * height * width


def host_available_bytes() -> int | None:
    """Memory available to a new allocation on this host (Linux ``MemAvailable``; else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(device: str | torch.device) -> int | None:
    """Free memory of ``device`` (CUDA: ``torch.cuda.mem_get_info``); None where unknown."""
    device = torch.device(device)
    if device.type == "cpu":
        return host_available_bytes()
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None


def host_processes() -> int:
    """Training processes on this host (torchrun's ``LOCAL_WORLD_SIZE``; 1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def cache_device(needed: int, device: str | torch.device, *, warn: bool = True) -> torch.device | None:
    """Where a cache of ``needed`` bytes goes: ``device``, else host memory, else None.

    In host memory every training process on the host holds its own copy
    (:func:`host_processes`), so that many copies must fit. Each step down
    warns (:class:`CacheMemoryWarning`) with the bytes needed and available
    (``warn=False``: silently, for ``data_cache="auto"``, which asked for nothing in particular).
    """
    cpu = torch.device("cpu")
    places = [torch.device(device)] + ([cpu] if torch.device(device) != cpu else [])
    for where, fallback in zip(places, [*places[1:], None]):
        free = available_bytes(where)
        total = needed * (host_processes() if where == cpu else 1)
        if free is None or total <= MEMORY_FRACTION * free:
            return where
        then = ("caching in host memory instead" if fallback is not None else
                "training with the normal loader instead (decoding and transforming every epoch)")
        copies = f" ({total // needed} processes' copies)" if total > needed else ""
        if warn:
            warnings.warn(f"the training image cache needs {total / 2**20:.0f} MiB{copies} but {where} has "
                          f"{free / 2**20:.0f} MiB available (the cache may take at most "
                          f"{MEMORY_FRACTION:.0%} of it): {then}", CacheMemoryWarning, stacklevel=3)
    return None


class TensorCache:
    """Every image of ``items`` decoded once and resized: uint8 ``images`` ``(N, 3, H, W)``.

    ``pids``, ``camids`` (int64 ``(N,)``) and ``paths`` follow the items' order.
    Decoding runs in ``workers`` loader processes (default: as the train
    loader's); an unreadable image raises :class:`hacnn.data.ImageReadError`
    naming it. ``device`` holds the tensor (no device-specific call: any
    ``torch.device``). ``build_s``: the seconds the decoding took.
    """

    def __init__(self, items: Sequence[Item], height: int = 160, width: int = 64, *,
                 device: str | torch.device = "cpu", workers: int | None = None,
                 progress: bool = False, batch_size: int = 64) -> None:
        self.items = list(items)
        self.height, self.width = height, width
        self.paths = [path for path, _, _ in self.items]
        self.pids = torch.tensor([pid for _, pid, _ in self.items], dtype=torch.int64)
        self.camids = torch.tensor([camid for _, _, camid in self.items], dtype=torch.int64)
        self.images = torch.empty((len(self.items), 3, height, width), dtype=torch.uint8,
                                  device=device)                                   # (N, 3, H, W)
        data = ImageDataset(self.items, resize_transform(height, width))
        start, began = 0, time.perf_counter()
        loader = _loader(data, batch_size, workers, 0, persistent=False, shuffle=False)
        for images, *_ in tqdm(loader, desc="caching images", disable=not progress, leave=False):
            self.images[start:start + len(images)].copy_(images)
            start += len(images)
        self.build_s = time.perf_counter() - began

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return len(self.items)


def _padding(pad) -> tuple[int, int, int, int]:
    """``v2.Pad``'s padding as (left, top, right, bottom)."""
    pad = [pad] if isinstance(pad, int) else list(pad)
    return tuple(pad * 4 if len(pad) == 1 else pad * 2 if len(pad) == 2 else pad)  # type: ignore


class TensorAugment:
    """The train transform (:func:`build_transforms`) on a uint8 batch, as tensor ops.

    Reads the transform's steps: its flip and crop probabilities and sizes,
    padding, normalisation and random erasing; any other step raises, so a
    change to the transform cannot pass unnoticed. :meth:`draw` draws the
    steps' parameters in the transform's order from the global torch stream
    seeded per sample, exactly as :class:`hacnn.data.ImageDataset` does (the
    global stream is left as it was); :meth:`__call__` applies them.
    """

    def __init__(self, height: int = 160, width: int = 64, **transform_kwargs) -> None:
        from torchvision.transforms import v2

        self.height, self.width = height, width
        self.random_steps: list = []           # the random steps, in the transform's order
        self.pad, self.normalize = (0, 0, 0, 0), None
        for step in build_transforms(height, width, train=True, **transform_kwargs).transforms:
            if isinstance(step, v2.Resize):
                if tuple(step.size) != (height, width):
                    raise ValueError(f"the cached path resizes to {(height, width)}, not {step.size}")
            elif isinstance(step, v2.Pad):
                if step.fill != 0 or step.padding_mode != "constant":
                    raise ValueError("the cached path pads with zeros only")
                self.pad = _padding(step.padding)
            elif isinstance(step, v2.Normalize):
                self.normalize = (list(step.mean), list(step.std))
            elif isinstance(step, v2.RandomErasing):
                if step.value != [0.0]:
                    raise ValueError("the cached path erases with zeros only")
                self.random_steps.append(step)
            elif isinstance(step, (v2.RandomHorizontalFlip, v2.RandomCrop)):
                self.random_steps.append(step)
            elif not isinstance(step, (v2.ToImage, v2.ToDtype)):
                raise ValueError(f"the cached path cannot apply {type(step).__name__}")
        left, top, right, bottom = self.pad
        self._padded = torch.empty((3, height + top + bottom, width + left + right), device="meta")
        self._plain = torch.empty((3, height, width), device="meta")

    def draw(self, seed: int, epoch: int, positions: Sequence[int], indices: Sequence[int]) -> torch.Tensor:
        """Per-sample parameters ``(B, 7)`` int64: flip, crop top, left, erase i, j, h, w (h = 0: none)."""
        from torchvision.transforms import v2

        rows = []
        with torch.random.fork_rng(devices=[]):
            for position, index in zip(positions, indices):
                # the CPU stream torch.manual_seed seeds (v2 draws from it), without its per-device calls
                torch.default_generator.manual_seed(sample_seed(seed, epoch, int(position), int(index)))
                row = [0] * 7
                for step in self.random_steps:
                    if isinstance(step, v2.RandomCrop):
                        crop = step.make_params([self._padded])
                        row[1:3] = crop["top"], crop["left"]
                    elif torch.rand(1) < step.p:     # v2's random-apply test (flip, erasing)
                        if isinstance(step, v2.RandomHorizontalFlip):
                            row[0] = 1
                        else:
                            erase = step.make_params([self._plain])
                            if erase["v"] is not None:
                                row[3:] = [erase[k] for k in "ijhw"]
                rows.append(row)
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, 7)

    def __call__(self, images: torch.Tensor, params: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` + :meth:`draw`'s ``params`` -> normalised float32 ``(B, 3, H, W)``.

        Flip, then zero-pad, then crop, as one gather: output pixel (y, x) reads
        source row ``top + y - pad_top`` and column ``left + x - pad_left``
        (mirrored when flipped); sources outside the image are padding (0).
        """
        from torchvision.transforms.v2 import functional as F

        b, h, w, dev = len(images), self.height, self.width, images.device
        erasing = bool(params[:, 5].any())
        params = params.to(dev, non_blocking=True)
        flip, top, left = params[:, 0:1].bool(), params[:, 1:2], params[:, 2:3]
        rows = top + torch.arange(h, device=dev) - self.pad[1]                     # (B, H)
        cols = left + torch.arange(w, device=dev) - self.pad[0]                    # (B, W)
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        cols = torch.where(flip, w - 1 - cols, cols)
        source = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]   # (B, H, W)
        x = images.reshape(b, 3, h * w).gather(2, source.view(b, 1, h * w).expand(b, 3, h * w))
        x = x.view(b, 3, h, w) * inside[:, None]                                   # uint8 (B, 3, H, W)
        x = F.to_dtype(x, torch.float32, scale=True)
        if self.normalize is not None:
            x = F.normalize(x, *self.normalize)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not erasing:
            return x
        i, j, eh, ew = (params[:, k, None, None] for k in range(3, 7))
        ys, xs = torch.arange(h, device=dev)[:, None], torch.arange(w, device=dev)
        erased = (ys >= i) & (ys < i + eh) & (xs >= j) & (xs < j + ew)             # (B, H, W)
        return x.masked_fill_(erased[:, None], 0.0)               # in place: keeps the layout


class CachedBatches:
    """Training batches from a :class:`TensorCache`: the train loader's plan and tuple layout.

    The sampler (``.sampler``, an :class:`hacnn.data.loading.EpochKeyedSampler`)
    is the one :func:`hacnn.data.build_train_loader` builds, with the same
    ``seed``, global ``batch_size`` and ``world_size`` / ``rank`` shards; each
    iteration is one epoch of ``(images, pids, camids, paths)`` with float
    images on ``device`` (default: the cache's) and pids/camids on the CPU, as
    the loader's. ``set_epoch`` and :func:`hacnn.reproducibility.get_data_state`
    work on ``.sampler`` as on the loader's, so a resume continues exactly.

    ``prefetch`` (CUDA only): each batch is prepared one ahead on a side CUDA
    stream, so its copy, gather and normalisation overlap the training step
    on the current stream (:meth:`_prefetched`); the batches are the same. On
    the CPU it does nothing: a batch's draws and gather cost ~1 % of a CPU
    training step (``benchmarks/bench_data_cache.py``) and would compete with
    that step for the same cores.
    """

    def __init__(self, cache: TensorCache, batch_size: int = 32, num_instances: int = 2, *,
                 seed: int = 0, world_size: int | None = None, rank: int | None = None,
                 device: str | torch.device | None = None, channels_last: bool = True,
                 prefetch: bool = True, **transform_kwargs) -> None:
        self.cache, self.seed, self.channels_last, self.prefetch = cache, seed, channels_last, prefetch
        self.device = cache.device if device is None else torch.device(device)
        self.augment = TensorAugment(cache.height, cache.width, **transform_kwargs)
        self.sampler = EpochKeyedSampler(cache.items, batch_size, num_instances, seed=seed,
                                         world_size=get_world_size() if world_size is None else world_size,
                                         rank=get_rank() if rank is None else rank)

    def __len__(self) -> int:
        return self.sampler.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]]:
        draws = list(self.sampler)                    # this epoch's (index, epoch, position); advances it
        size = self.sampler.local_batch_size
        plans = []                                    # (indices, epoch, positions) of each batch
        for start in range(0, len(draws) - size + 1, size):
            indices, epochs, positions = zip(*draws[start:start + size])
            plans.append((indices, epochs[0], positions))
        if self.prefetch and self.device.type == "cuda":
            yield from self._prefetched(plans)
        else:
            for plan in plans:
                yield self.batch(*plan)

    def _prefetched(self, plans: list) -> Iterator:
        """The batches of ``plans``, each prepared on a side CUDA stream while the one before trains.

        The side stream first waits for the current one (the cache's copy and whatever came before
        the epoch). Before a batch is handed over, the current stream waits for the side stream
        (``wait_stream``), and its images are recorded on the current stream (``record_stream``):
        the caching allocator then keeps their memory from the next batches until the training
        step queued on the current stream has read them. Then the next batch is queued on the
        side stream, before the caller queues its step on the current one.
        """
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)

        def prepare(k: int):
            if k >= len(plans):
                return None
            with torch.cuda.stream(side):
                return self.batch(*plans[k])

        ahead = prepare(0)
        for k in range(len(plans)):
            batch = ahead
            current.wait_stream(side)
            batch[0].record_stream(current)
            ahead = prepare(k + 1)
            yield batch

    def batch(self, indices: Sequence[int], epoch: int, positions: Sequence[int]):
        """One batch of cached images ``indices`` at their epoch-plan ``positions``."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        params = self.augment.draw(self.seed, epoch, positions, indices)
        raw = self.cache.images[index.to(self.cache.device, non_blocking=True)]
        if self.device.type == "cuda" and raw.device.type == "cpu":
            raw = raw.pin_memory()                    # a host cache: an asynchronous copy to the GPU
        images = self.augment(raw.to(self.device, non_blocking=True), params, self.channels_last)
        return images, self.cache.pids[index], self.cache.camids[index], [self.cache.paths[i] for i in indices]


def build_cached_train_loader(dataset: ReIDDataset | Sequence[Item], batch_size: int = 32,
                              num_instances: int = 2, *, height: int = 160, width: int = 64,
                              cache: str = "memory", device: str | torch.device = "cpu",
                              workers: int | None = None, seed: int = 0,
                              world_size: int | None = None, rank: int | None = None,
                              channels_last: bool = True, progress: bool = False,
                              **transform_kwargs) -> "CachedBatches | torch.utils.data.DataLoader":
    """:class:`CachedBatches` over the cached training images, or the normal loader.

    ``cache``: ``"memory"`` (host memory; augmented on ``device``, the
    training device, after the uint8 batch is copied there) or ``"device"``
    (the cache itself on ``device``; in host memory with a warning if the
    device has too little free memory); ``"none"`` or a cache larger than
    :data:`MEMORY_FRACTION` of the free memory (a :class:`CacheMemoryWarning`
    with the numbers): :func:`hacnn.data.build_train_loader` with the same
    arguments, which yields the same batches. ``"auto"``: ``"memory"`` where
    it fits, else the normal loader without a warning.
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    items = _items(dataset, "train")
    where = None if cache == "none" else \
        cache_device(cache_bytes(len(items), height, width), device if cache == "device" else "cpu",
                     warn=cache != "auto")
    if where is None:
        return build_train_loader(items, batch_size, num_instances, height=height, width=width,
                                  workers=workers, seed=seed, world_size=world_size, rank=rank,
                                  **transform_kwargs)
    images = TensorCache(items, height, width, device=where, workers=workers, progress=progress)
    return CachedBatches(images, batch_size, num_instances, seed=seed, world_size=world_size,
                         rank=rank, device=device, channels_last=channels_last, **transform_kwargs)
