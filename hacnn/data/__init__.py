"""Re-id benchmarks, transforms, the identity sampler and data loaders.

>>> from hacnn.data import build_dataset, build_train_loader    # doctest: +SKIP
>>> dataset = build_dataset("market1501", root="~/data")       # doctest: +SKIP
>>> loader = build_train_loader(dataset, batch_size=32, num_instances=2, seed=0)  # doctest: +SKIP

Readers return ``.train``, ``.query``, ``.gallery`` lists of
``(path, pid, camid)``; see :mod:`hacnn.data.base` for the conventions.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from functools import partial

from .base import (DATA_ENV, DatasetCountError, DatasetCountWarning, DatasetLayoutError, Item,
                   ReIDDataset, resolve_root)
from .cuhk03 import CUHK03
from .cuhk03_pair import CUHK03Pair
from .dukemtmcreid import DukeMTMCreID
from .folder import ImageFolderReID, UnmatchedQueryWarning
from .loading import (ImageDataset, ImageReadError, build_test_loaders, build_train_loader,
                      default_workers, read_image)
from .market1501 import Market1501
from .msmt17 import MSMT17
from .sampler import RandomIdentitySampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

try:  # written alongside this package; optional until it lands
    from .synthetic import Synthetic, generate_synthetic
except ImportError as err:  # pragma: no cover - depends on the checkout
    if err.name != f"{__name__}.synthetic":  # a failure inside the module itself
        raise


def _synthetic(root: str | os.PathLike | None = None, **kwargs) -> ReIDDataset:
    """Imported on use, so the registry does not need the generator's module."""
    return importlib.import_module(".synthetic", __name__).Synthetic(root, **kwargs)


DATASETS: dict[str, Callable[..., ReIDDataset]] = {
    "synthetic": _synthetic,
    "market1501": Market1501,
    "dukemtmcreid": DukeMTMCreID,
    "cuhk03-labeled": partial(CUHK03, labeled=True),
    "cuhk03-detected": partial(CUHK03, labeled=False),
    "cuhk03-pair": CUHK03Pair,
    "msmt17": MSMT17,
    "folder": ImageFolderReID,
}


def build_dataset(name: str, root: str | os.PathLike | None = None, **kwargs) -> ReIDDataset:
    """Read benchmark ``name`` (one of :data:`DATASETS`) from ``root``.

    ``root`` defaults to the ``HACNN_DATA`` environment variable; keyword
    arguments go to the reader (e.g. ``multi_query=True`` for Market-1501,
    ``split="classic", split_id=3`` for CUHK03, ``merge_val=True`` for MSMT17,
    ``pattern=..., test_ids=0.3`` for ``"folder"``, ``strict=True``).
    """
    key = name.lower()
    if key not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[key](root, **kwargs)


__all__ = [
    "Item", "ReIDDataset", "DatasetLayoutError", "DatasetCountError", "DatasetCountWarning",
    "DATA_ENV", "resolve_root",
    "Market1501", "DukeMTMCreID", "CUHK03", "CUHK03Pair", "MSMT17", "ImageFolderReID",
    "UnmatchedQueryWarning",
    "DATASETS", "build_dataset",
    "build_transforms", "IMAGENET_MEAN", "IMAGENET_STD", "RandomIdentitySampler",
    "ImageDataset", "ImageReadError", "read_image", "build_train_loader",
    "build_test_loaders", "default_workers",
]
if "Synthetic" in globals():
    __all__ += ["Synthetic", "generate_synthetic"]
