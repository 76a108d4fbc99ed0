"""The paper's reported results, as data (notebook 08, the results table of ``reproduce``).

Li, Zhu & Gong, "Harmonious Attention Network for Person Re-Identification",
CVPR 2018: Table 1 (CUHK03, 767/700 split of Zhong et al., CVPR 2017),
Table 2 (Market-1501, single- and multi-query), Table 3 (DukeMTMC-reID).
Rank-1 and mAP in percent, without re-ranking. :data:`REFERENCE_RESULTS`
holds HA-CNN numbers published elsewhere (e.g. MSMT17 by torchreid), each
with its source; they are not the paper's and stay out of its table.
"""
from __future__ import annotations

from typing import NamedTuple

CITATION = ("W. Li, X. Zhu, S. Gong. Harmonious Attention Network for Person "
            "Re-Identification. CVPR 2018, Tables 1-3.")


class PaperResult(NamedTuple):
    """One row of the paper's tables: a benchmark/protocol and its Rank-1 / mAP (%)."""

    key: str          # our name for the row (see BENCHMARKS)
    benchmark: str    # as the paper names it
    protocol: str
    rank1: float
    mAP: float
    table: str        # where in the paper


PAPER_RESULTS: dict[str, PaperResult] = {r.key: r for r in (
    PaperResult("market1501-sq", "Market-1501", "single-query", 91.2, 75.7, "Table 2"),
    PaperResult("market1501-mq", "Market-1501", "multi-query", 93.8, 82.8, "Table 2"),
    PaperResult("dukemtmcreid", "DukeMTMC-reID", "single-query", 80.5, 63.8, "Table 3"),
    PaperResult("cuhk03-labeled", "CUHK03 labeled", "767/700 split", 44.4, 41.0, "Table 1"),
    PaperResult("cuhk03-detected", "CUHK03 detected", "767/700 split", 41.7, 38.6, "Table 1"),
)}

# Row key -> (dataset name for hacnn.experiment, evaluation option); the
# synthetic benchmark is ours: the paper has no such row.
BENCHMARKS: dict[str, tuple[str, str | None]] = {
    "market1501-sq": ("market1501", None),
    "market1501-mq": ("market1501", "multi_query"),
    "dukemtmcreid": ("dukemtmcreid", None),
    "cuhk03-labeled": ("cuhk03-labeled", None),
    "cuhk03-detected": ("cuhk03-detected", None),
}


def paper_result(key: str) -> PaperResult:
    """The paper's row ``key`` (KeyError naming the known rows otherwise)."""
    try:
        return PAPER_RESULTS[key]
    except KeyError:
        raise KeyError(f"the paper has no row {key!r}; rows: {', '.join(PAPER_RESULTS)}") from None


class ReferenceResult(NamedTuple):
    """A published number for HA-CNN that is *not* in the paper, with its exact source."""

    key: str
    benchmark: str
    protocol: str
    rank1: float
    mAP: float
    source: str


# The HA-CNN paper reports no MSMT17 result (Tables 1-3: CUHK03, Market-1501, DukeMTMC-reID).
REFERENCE_RESULTS: dict[str, ReferenceResult] = {r.key: r for r in (
    ReferenceResult(
        "msmt17", "MSMT17", "single-query, list_train.txt only (torchreid default)", 64.7, 37.2,
        "torchreid model zoo (KaiyangZhou/deep-person-reid, docs/MODEL_ZOO.md, 'Same-domain "
        "ReID'): hacnn trained from scratch, softmax loss, 160x64, random_flip + random_crop, "
        "euclidean distance"),
)}
