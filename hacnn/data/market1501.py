"""Market-1501 reader (Zheng et al., "Scalable Person Re-identification: A
Benchmark", ICCV 2015).

Layout of the release ``Market-1501-v15.09.15/``::

    bounding_box_train/   12,936 images of 751 ids (training)
    bounding_box_test/    19,732 images: 750 test ids, distractors (0000)
                          and junk (-1) boxes
    query/                3,368 hand-drawn boxes of the 750 test ids
    gt_bbox/              25,259 hand-drawn boxes of all 1,501 ids
                          (the multi-query protocol's queries)

File names ``PPPP_cCsS_FFFFFF_NN.jpg``: person id (``-1`` junk, ``0000``
distractor), camera ``C`` (1-6), sequence ``S``, frame, box index.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from .base import (DISTRACTOR_PID, JUNK_PID, DatasetCountError, DatasetCountWarning,
                   FolderDataset, Item, warn_user)

# Split sizes of the release's readme and the paper; gallery counts
# leave the 3,819 junk (-1) boxes out, as torchreid and most papers report.
MARKET1501_COUNTS: Mapping[str, int] = {
    "train_ids": 751, "train_images": 12_936,
    "query_ids": 750, "query_images": 3_368,
    "gallery_ids": 751, "gallery_images": 15_913,  # 750 test ids + distractor id 0
    "cameras": 6,
}


class Market1501(FolderDataset):
    """Market-1501, single-query (default) or multi-query protocol.

    ``train`` leaves junk (-1) and distractor (0) boxes out; ``gallery`` keeps
    both (the evaluation ignores junk and counts distractors as non-matches).

    With ``multi_query=True`` the query set follows the release's multi-query
    protocol (Zheng et al. 2015): for each single query (an id seen by
    one camera) all hand-drawn boxes in ``gt_bbox/`` of that id and camera are
    queries; the evaluation pools the features of one (pid, camid) group into
    one query, so the number of queries stays 3,368. A group without a box in
    ``gt_bbox/`` (a damaged copy) keeps its single query image, with a warning.

    Args:
        root: data root (or ``HACNN_DATA``); the dataset folder is found as
            ``root``, ``root/Market-1501-v15.09.15``,
            ``root/market1501/Market-1501-v15.09.15``, ``root/market1501``.
        multi_query: read the multi-query query set from ``gt_bbox/``.
        strict: raise instead of warning when split sizes differ from
            :data:`MARKET1501_COUNTS`.
    """

    official_counts = MARKET1501_COUNTS
    title = "Market-1501"
    folder_names = ("Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15",
                    "market1501", "Market-1501")
    keyword = "market"
    name_pattern = r"(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg"
    pattern_text = "PPPP_cCsS_FFFFFF_NN.jpg (e.g. 0002_c1s1_000451_03.jpg, -1 for junk)"
    ignored_pids = frozenset({JUNK_PID, DISTRACTOR_PID})
    multi_query_dir = "gt_bbox"

    def __init__(self, root: str | os.PathLike | None = None, multi_query: bool = False,
                 strict: bool = False) -> None:
        self.multi_query = multi_query
        self.strict = strict
        super().__init__(root, strict=strict,
                         extra_folders=(self.multi_query_dir,) if multi_query else ())

    @property
    def expected_counts(self) -> Mapping[str, int] | None:
        counts = self.official_counts
        if counts is None or not self.multi_query:
            return counts
        # The multi-query set's size is not published; its ids are.
        return {k: v for k, v in counts.items() if k != "query_images"}

    def build_query(self, query: list[Item]) -> list[Item]:
        if not self.multi_query:
            return query
        groups = {(pid, cam) for _, pid, cam in query}
        boxes = [it for it in self.read_folder(self.multi_query_dir, drop_ignored=True)
                 if (it[1], it[2]) in groups]
        missing = sorted(groups - {(pid, cam) for _, pid, cam in boxes})
        if missing:
            message = (f"{self.multi_query_dir}/ has no box for {len(missing)} of the "
                       f"{len(groups)} query (pid, camera) groups, e.g. pid {missing[0][0]} "
                       f"camera {missing[0][1] + 1}; their single queries are used")
            if self.strict:
                raise DatasetCountError(message)
            warn_user(message, DatasetCountWarning)
        lost = set(missing)
        return boxes + [it for it in query if (it[1], it[2]) in lost]
