"""MSMT17 reader (Wei, Zhang, Gao & Tian, "Person Transfer GAN to Bridge Domain
Gap for Person Re-Identification", CVPR 2018).

The two releases differ only in their image folders (V2 blurs faces)::

    MSMT17_V1/train/  test/                    list_train.txt  list_val.txt
    MSMT17_V2/mask_train_v2/  mask_test_v2/    list_query.txt  list_gallery.txt

Each list line is ``<relative path> <pid>``, e.g.
``0000/0000_000_01_0303morning_0015_0.jpg 0``; train and val paths are under
the train folder, query and gallery paths under the test folder. File names
``PPPP_SSS_CC_<date><time>_FFFF_N.jpg``: person, sequence, camera ``CC``
(01-15), capture date and time of day, frame, box. pids are taken from the
lists as they are: training ids 0-1,040 are relabelled; test ids 0-3,059 are
other people (pid 0 is a person, not a distractor).

``list_train.txt`` and ``list_val.txt`` together are the published training
set. ``merge_val=False`` (default) trains on ``list_train.txt`` only, the
convention of torchreid and fast-reid (their ``combineall`` adds val), under
which their published MSMT17 numbers were obtained; ``merge_val=True`` adds
``list_val.txt``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from .base import DatasetLayoutError, Item, ReIDDataset, find_dataset_dir, resolve_root
from .folder import check_distinct

# Wei et al. 2018, Sec. 3 (also torchreid's MSMT17 docstring): 4,101 identities,
# 126,441 boxes, 15 cameras; 1,041 training ids (32,621 boxes = list_train + list_val),
# 3,060 test ids (11,659 query + 82,161 gallery boxes). No distractors or junk.
MSMT17_COUNTS: Mapping[str, int] = {
    "train_ids": 1_041, "train_images": 32_621,
    "query_ids": 3_060, "query_images": 11_659,
    "gallery_ids": 3_060, "gallery_images": 82_161,
    "cameras": 15,
}
MSMT17_IDENTITIES = 4_101
VERSIONS: Mapping[str, tuple[str, str]] = {"MSMT17_V1": ("train", "test"),
                                           "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
NAME_PATTERN = re.compile(r"(\d+)_(\d+)_(\d{2})_[^/\\]*\.jpg")
PATTERN_TEXT = "PPPP_SSS_CC_<date><time>_FFFF_N.jpg (e.g. 0000_000_01_0303morning_0015_0.jpg)"


def _candidates(root: Path) -> list[Path]:
    return [root, *sorted(p for p in (*root.glob("*"), *root.glob("*/*")) if p.is_dir())]


def locate(root: Path) -> tuple[str, Path]:
    """(version, dataset folder): the release whose image folders appear under ``root``."""
    for version, folders in VERSIONS.items():
        if any((c / f).is_dir() for c in _candidates(root) for f in folders):
            names = (version, f"msmt17/{version}", f"MSMT17/{version}", "msmt17", "MSMT17")
            return version, find_dataset_dir(root, title=f"MSMT17 ({version} layout)", names=names,
                                             keyword="msmt", required=(*folders, *LISTS))
    layouts = "; ".join(f"{v}/{{{a}/, {b}/}}" for v, (a, b) in VERSIONS.items())
    raise DatasetLayoutError(f"MSMT17 not found under {str(root)!r}: expected {layouts} "
                             f"with {', '.join(LISTS)}, in the root or up to two folders below it")


def read_list(list_path: Path, image_dir: Path) -> list[Item]:
    """Items of one list file; paths under ``image_dir``, cameras from the file names."""
    items, missing = [], []
    for number, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DatasetLayoutError(f"{str(list_path)!r} line {number}: expected "
                                     f"'<relative path> <pid>', got {line.strip()!r}")
        rel, pid = fields[0], int(fields[1])
        match = NAME_PATTERN.fullmatch(os.path.basename(rel))
        if match is None:
            raise DatasetLayoutError(f"{str(list_path)!r} line {number}: unexpected file name "
                                     f"{rel!r}: expected {PATTERN_TEXT}")
        path = image_dir / rel
        if not path.is_file():
            missing.append(str(path))
        items.append((str(path), pid, int(match.group(3)) - 1))
    if missing:
        raise DatasetLayoutError(f"{len(missing)} images listed in {str(list_path)!r} are missing, "
                                 f"e.g. {missing[0]!r}")
    return items


class MSMT17(ReIDDataset):
    """MSMT17, V1 or V2 release (found by its folder names), single-query protocol.

    Args:
        root: data root (or ``HACNN_DATA``); the dataset folder is found as
            ``root``, ``root/MSMT17_V1`` (or ``_V2``), ``root/msmt17/MSMT17_V1``
            (torchreid's layout), or a folder up to two levels below whose name
            contains ``msmt``.
        merge_val: train on ``list_train.txt`` + ``list_val.txt`` (the published
            training set) instead of ``list_train.txt`` only (default, as torchreid).
        strict: raise instead of warning when split sizes differ from
            :data:`MSMT17_COUNTS` (without ``merge_val`` the training split's
            size is not published, so it is not checked).
    """

    official_counts = MSMT17_COUNTS
    distractor_pid = None  # test pid 0 is a person

    def __init__(self, root: str | os.PathLike | None = None, merge_val: bool = False,
                 strict: bool = False) -> None:
        self.merge_val = merge_val
        self.version, self.dataset_dir = locate(resolve_root(root))
        train_dir, test_dir = (self.dataset_dir / f for f in VERSIONS[self.version])
        lists = {name: read_list(self.dataset_dir / name, folder) for name, folder in
                 zip(LISTS, (train_dir, train_dir, test_dir, test_dir)) if merge_val or "val" not in name}
        check_distinct(lists, resolve=False)
        train = lists["list_train.txt"] + lists.get("list_val.txt", [])
        query, gallery = lists["list_query.txt"], lists["list_gallery.txt"]
        super().__init__(sorted(train), sorted(query), sorted(gallery), strict=strict,
                         location=self.dataset_dir)

    @property
    def expected_counts(self) -> Mapping[str, int]:
        if self.merge_val:
            return self.official_counts
        return {k: v for k, v in self.official_counts.items() if not k.startswith("train_")}
