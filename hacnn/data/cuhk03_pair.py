"""CUHK03 camera pair 1, detected, 743/100: a preset of the folder reader.

Real CUHK03 crops (Li et al., "DeepReID", CVPR 2014) of one camera pair,
"detected" (DPM) boxes, kept as::

    train/   743 identities, 7,239 images     PPPP_II.jpg
    test/    100 other identities, 938 images  (both number identities from 0000)

``II`` is the image index: 00-04 from the pair's first camera, 05-09 from its
second. Protocol: query = the test images of the first camera, gallery =
those of the second, Market-style CMC / mAP (every query has true matches,
none from its own camera).

This is **not** the paper's CUHK03 767/700 protocol (all five camera pairs,
1,467 identities): numbers from it are not comparable with the paper's
CUHK03 rows. Label them :data:`LABEL`.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from .base import find_dataset_dir, resolve_root
from .folder import ImageFolderReID

LABEL = "CUHK03 camera pair 1, detected, 743/100"
PATTERN = r"(?P<identity>\d{4})_(?P<image>\d{2})\.jpg"
# Sizes of the folder's README (the test images split by camera are not given there).
CUHK03_PAIR_COUNTS: Mapping[str, int] = {"train_ids": 743, "train_images": 7_239,
                                         "query_ids": 100, "gallery_ids": 100, "cameras": 2}


def camera_of(groups: Mapping[str, str]) -> str:
    """Image index 00-04: camera 1 of the pair; 05-09: camera 2."""
    return "1" if int(groups["image"]) < 5 else "2"


class CUHK03Pair(ImageFolderReID):
    """CUHK03 camera pair 1, detected, 743/100 (see the module docstring).

    Args:
        root: the ``cuhk03_pair1`` folder, or a folder holding it.
        strict: raise instead of warning when sizes differ from
            :data:`CUHK03_PAIR_COUNTS`.
    """

    official_counts = CUHK03_PAIR_COUNTS
    label = LABEL

    def __init__(self, root: str | os.PathLike | None = None, strict: bool = False,
                 check_images: bool = True) -> None:
        folder = find_dataset_dir(resolve_root(root), title=LABEL, names=("cuhk03_pair1",),
                                  keyword="cuhk03_pair", required=("train", "test"))
        super().__init__(folder, layout="pattern", pattern=PATTERN, camera=camera_of,
                         split_folders=True, query="first-camera", check_images=check_images,
                         strict=strict)
