"""Image reading, the image Dataset and the train / test DataLoaders.

Reading is strict: an image that cannot be decoded (missing, zero bytes,
truncated, not an image) raises :class:`ImageReadError` naming its path, in
the main process or, re-raised by the DataLoader, from a worker.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from ..distributed import get_rank, get_world_size
from .base import Item, ReIDDataset
from .sampler import RandomIdentitySampler
from .transforms import build_transforms, to_tensor


class ImageReadError(OSError):
    """An image file could not be read; the message names the file.

    Re-raised from a DataLoader worker, PyTorch builds it from a message that
    holds the worker's whole traceback; that becomes the one-line reason plus
    the worker's name.
    """

    def __init__(self, message: str = "", *args) -> None:
        head, sep, trace = str(message).partition("\nOriginal Traceback")
        lines = trace.rstrip().splitlines()
        if sep and head.startswith("Caught ") and lines and ": " in lines[-1]:
            where = head.split(" in ", 1)[-1].rstrip(".")         # "DataLoader worker process 0"
            message = f"{lines[-1].split(': ', 1)[1]} (in {where})"
        super().__init__(message, *args)


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully into an RGB PIL image.

    Grayscale, RGBA, palette and CMYK images become RGB (a palette with
    transparency goes through RGBA, as Pillow advises).
    """
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncated data fails here, not later
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        reason = "empty file (0 bytes)" if _is_empty(path) else f"{type(err).__name__}: {err}"
        raise ImageReadError(f"cannot read image {str(path)!r}: {reason}") from err


def _is_empty(path: str | os.PathLike) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False


class ImageDataset(Dataset):
    """``(path, pid, camid)`` items -> ``(image, pid, camid, path)`` samples.

    ``transform`` maps an RGB PIL image to a tensor (default: a float tensor
    in [0, 1] at the image's own size). With a ``seed``, random transforms
    draw from a stream that is a function of ``(seed, epoch, draw)`` only,
    never of a per-process stream: the training loader's sampler hands each
    draw as ``(index, epoch, position)`` (:class:`EpochKeyedSampler`); a
    plain integer index uses ``(seed, self.epoch, index)``. So augmentation
    does not depend on the number of loader workers, repeats exactly after a
    resume, and neither depends on nor disturbs the global torch RNG.
    """

    def __init__(self, items: Sequence[Item], transform: Callable | None = None,
                 seed: int | None = None) -> None:
        self.items = list(items)
        self.transform = transform if transform is not None else to_tensor()
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Epoch of plain integer indices (sampler-keyed draws carry their own)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int | tuple[int, int, int]) -> tuple[torch.Tensor, int, int, str]:
        if isinstance(index, tuple):                 # (index, epoch, position in the epoch)
            index, epoch, position = (int(i) for i in index)
        else:
            index, epoch, position = int(index), self.epoch, int(index)
        path, pid, camid = self.items[index]
        image = read_image(path)
        if self.seed is None:
            return self.transform(image), pid, camid, path
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, position, index))
            return self.transform(image), pid, camid, path


def sample_seed(seed: int, epoch: int, position: int, index: int) -> int:
    """A 63-bit seed that is a pure function of its arguments (numpy ``SeedSequence``)."""
    state = np.random.SeedSequence([seed % 2**63, epoch, position, index]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class EpochKeyedSampler(RandomIdentitySampler):
    """:class:`RandomIdentitySampler` that yields ``(index, epoch, position)`` draws.

    The epoch and position travel with each index into the worker process,
    so :class:`ImageDataset` derives the draw's augmentation from them. The
    position is the one in the global epoch plan, so a multi-process run
    augments every draw as a single process does.
    """

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch = self.epoch                  # read on the first item, as the parent draws it
        for position, index in self._shard():
            yield index, epoch, position


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn`` (kept for callers; augmentation no longer needs it).

    PyTorch seeds ``random``, ``numpy`` and ``torch`` in each worker from the
    loader's generator (``base_seed + worker_id``); :class:`ImageDataset`
    derives its randomness from ``(seed, epoch, draw)`` instead.
    """


def default_workers() -> int:
    """Loader processes: one core left to the training process, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _items(dataset: ReIDDataset | Sequence[Item], split: str) -> list[Item]:
    return list(getattr(dataset, split) if hasattr(dataset, split) else dataset)


def _loader(data: ImageDataset, batch_size: int, workers: int | None, seed: int,
            persistent: bool, **kwargs) -> DataLoader:
    workers = default_workers() if workers is None else workers
    return DataLoader(data, batch_size=batch_size, num_workers=workers,
                      persistent_workers=persistent and workers > 0,
                      pin_memory=torch.cuda.is_available(), worker_init_fn=seed_worker,
                      generator=torch.Generator().manual_seed(seed), **kwargs)


def build_train_loader(dataset: ReIDDataset | Sequence[Item], batch_size: int = 32,
                       num_instances: int = 2, *, height: int = 160, width: int = 64,
                       transform: Callable | None = None, workers: int | None = None,
                       seed: int = 0, world_size: int | None = None, rank: int | None = None,
                       **transform_kwargs) -> DataLoader:
    """Training batches of P = batch_size / num_instances ids x K images.

    ``dataset`` is a reader (its ``.train`` is used) or a list of items.
    ``transform`` defaults to ``build_transforms(height, width, train=True,
    **transform_kwargs)``. Workers persist across epochs. The sampler is
    ``loader.sampler`` (``loader.sampler.set_epoch(e)`` pins an epoch's
    order). With the same ``seed``, batches and augmentations repeat exactly,
    whatever the number of ``workers``, and continue exactly after a resume.
    ``batch_size`` is the global batch: in a multi-process run (``world_size``
    and ``rank`` default to the process group's, :mod:`hacnn.distributed`)
    each process loads its ``batch_size / world_size`` images of it.
    """
    items = _items(dataset, "train")
    if transform is None:
        transform = build_transforms(height, width, train=True, **transform_kwargs)
    sampler = EpochKeyedSampler(items, batch_size, num_instances, seed=seed,
                                world_size=get_world_size() if world_size is None else world_size,
                                rank=get_rank() if rank is None else rank)
    return _loader(ImageDataset(items, transform, seed=seed), sampler.local_batch_size, workers, seed,
                   persistent=True, sampler=sampler, drop_last=True)


def build_test_loaders(dataset: ReIDDataset, batch_size: int = 128, *, height: int = 160,
                       width: int = 64, transform: Callable | None = None,
                       workers: int | None = None) -> tuple[DataLoader, DataLoader]:
    """``(query_loader, gallery_loader)`` in the lists' order, eval transform.

    Workers are not persistent: evaluation runs now and then, and idle
    worker processes would hold memory in between.
    """
    if transform is None:
        transform = build_transforms(height, width, train=False)
    return tuple(_loader(ImageDataset(_items(dataset, split), transform), batch_size,
                         workers, 0, persistent=False, shuffle=False)
                 for split in ("query", "gallery"))
