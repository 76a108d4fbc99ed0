"""Re-id evaluation: distances, CMC / mAP / mINP, feature extraction.

Protocols (``protocol=``):

- ``"market"`` (also ``"duke"``, ``"cuhk03"`` = the CUHK03 767/700 split of
  Zhong et al., CVPR 2017): the Market-1501 protocol (Zheng et al., ICCV
  2015). Per query, gallery items with the same identity *and* camera are
  removed and junk (pid -1) is ignored; distractors (pid 0) are ordinary
  non-matches. CMC counts the first true match, AP averages precision over
  all true matches. A query with no valid match (its identity absent from the
  gallery, or seen there only by its own camera) is skipped and counted in
  ``num_skipped_queries``: every metric is a mean over the other queries (scored
  as misses instead, each would fall by the skipped share).
- ``"nocam"``: for data without camera ids (:mod:`hacnn.data.folder`). The
  same-identity-same-camera filter cannot be applied (with every camid equal
  it would discard every true match), so every non-junk gallery item of the
  query's identity is a true match. The query's own image must not be in the
  gallery (the folder readers guarantee query and gallery share no file); to
  rank a set against itself, use ``"market"`` with one distinct camid per
  image, which removes exactly each query's own item.
- ``"cuhk03_classic"``: the single-gallery-shot protocol (Li et al., CVPR
  2014; torchreid's ``eval_cuhk03``). Per query, one valid item per gallery
  identity is drawn at random, ``num_repeats`` times from a seeded
  generator; CMC and AP (= 1 / rank of the single sampled match) are
  averaged over the draws. (torchreid instead takes AP on the unsampled
  gallery, which is what ``"market"`` gives.)

Ranks and ties: a metric needs only the rank of each true match. For the
k-th closest of a query's n true matches (distance ``d_k``),
``rank_k = k + #{valid non-matches g : d(q, g) <= d_k}``: each gallery
distance is binary-searched among the n sorted match distances (only items
closer than the last match are searched when they are few), so no gallery
row is ever sorted. Ties are **pessimistic**: a non-match at the same
distance as a true match is ranked before it, so results never depend on a
sort's tie order (torchreid's argsort order at ties is arbitrary); ties
among true matches change no metric. Then ``CMC@k = mean_q [rank_1 <= k]``,
``AP = mean_k k / rank_k``, ``INP = n / rank_n`` (mINP: Ye et al., TPAMI 2021).

Work goes in chunks of query rows, so memory beyond the (Q, G) output stays
bounded; :func:`evaluate_features` never holds the whole matrix (one 32 MiB
block of distances per matmul, ranked in 8 MiB chunks).
``"euclidean"`` is the *squared* distance, as in torchreid; ``"cosine"`` is
1 - cosine similarity. :func:`extract_features` and :func:`evaluate_model`
run a model over ``(images, pids, camids, paths)`` loaders.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .features import extract_features, inference_net  # extract_features: re-exported (hacnn.features)
from .reranking import re_ranking

__all__ = ["RankResult", "compute_distance_matrix", "evaluate", "evaluate_features",
           "evaluate_rank", "multi_query_pool", "extract_features", "evaluate_model"]

METRICS = ("euclidean", "cosine")
PROTOCOLS = {"market": "market", "duke": "market", "cuhk03": "market",
             "nocam": "nocam", "cuhk03_classic": "single_shot"}
_CHUNK_ELEMENTS = 1 << 21  # distances ranked per chunk (8 MiB in float32)
_BLOCK_CHUNKS = 4          # chunks per matmul block (32 MiB): large matmuls run faster
_DENSE_FRACTION = 0.25     # above this share of "near" items, searchsorted the whole chunk


@dataclass(frozen=True, eq=False)
class RankResult:
    """CMC curve (``cmc[k - 1]`` = Rank-k, fractions in [0, 1]), mAP, mINP and query counts."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_skipped_queries: int

    def rank(self, k: int) -> float:
        return float(self.cmc[k - 1]) if 1 <= k <= len(self.cmc) else float("nan")

    def row(self) -> dict:
        """A flat dict (one row of a results table): rank1/5/10/20, mAP, mINP, counts."""
        ranks = {f"rank{k}": self.rank(k) for k in (1, 5, 10, 20)}
        return {**ranks, "mAP": self.mAP, "mINP": self.mINP,
                "num_valid_queries": self.num_valid_queries,
                "num_skipped_queries": self.num_skipped_queries}


# ----------------------------------------------------------------------------- input checks

def _fail(name: str, expected: str, received: str) -> None:
    raise ValueError(f"{name}: expected {expected}, received {received}")


def _as_features(x, name: str) -> torch.Tensor:
    """A finite (N, D) float tensor with N >= 1 (numpy or torch in)."""
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        _fail(name, "a torch.Tensor or numpy.ndarray", type(t).__name__)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        _fail(name, "a non-empty 2-D (num_items, dim) matrix", f"shape {tuple(t.shape)}")
    t = t if t.is_floating_point() else t.float()
    _check_finite(t, name)
    return t


def _as_ids(x, name: str, n: int) -> torch.Tensor:
    """A 1-D int64 tensor of length n (pids or camids)."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() != 1 or len(t) != n:
        _fail(name, f"a 1-D array of length {n}", f"shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        _fail(name, "integer ids", f"dtype {t.dtype}")
    return t.cpu().long().contiguous()


def _check_ids(q_pids, g_pids, q_camids, g_camids, num_q: int, num_g: int):
    names, sizes = ("q_pids", "g_pids", "q_camids", "g_camids"), (num_q, num_g) * 2
    return [_as_ids(x, name, n) for x, name, n in zip((q_pids, g_pids, q_camids, g_camids), names, sizes)]


def _check_choice(value, name: str, choices) -> None:
    if value not in choices:
        _fail(name, f"one of {sorted(choices)}", repr(value))


def _check_finite(t: torch.Tensor, name: str) -> None:
    # a NaN/inf entry makes the sum non-finite: one fast reduction, exact check only then
    if not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
        _fail(name, "finite values", f"{int((~torch.isfinite(t)).sum())} NaN/inf entries")


# ----------------------------------------------------------------------------- distances

def _row_chunks(num_rows: int, num_cols: int, chunks_per_slice: int = 1):
    step = max(1, _CHUNK_ELEMENTS // max(num_cols, 1)) * chunks_per_slice
    return [slice(i, min(i + step, num_rows)) for i in range(0, num_rows, step)]


class _Gallery:
    """Gallery features prepared once for ``(B, D)`` query chunks."""

    def __init__(self, gf: torch.Tensor, metric: str):
        self.metric = metric
        self.gf = F.normalize(gf, dim=1) if metric == "cosine" else gf     # (G, D)
        self.g_sq = torch.linalg.vector_norm(self.gf, dim=1).square_()      # (G,)

    def scores(self, q: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) -> (B, G) ranking scores: the distance minus a per-query constant.

        ``|g|^2 - 2 <q, g>`` (euclidean) or ``-<q, g>`` on unit vectors (cosine):
        one matmul per chunk, each query's ranking that of its distances.
        """
        if self.metric == "cosine":
            return torch.mm(F.normalize(q, dim=1).neg_(), self.gf.t(), out=out)
        return torch.mm(-2 * q, self.gf.t(), out=out).add_(self.g_sq)


def _feature_pair(qf, gf, metric: str):
    """Checked (Q, D) and (G, D) features in one dtype."""
    qf, gf = _as_features(qf, "qf"), _as_features(gf, "gf")
    _check_choice(metric, "metric", METRICS)
    if qf.shape[1] != gf.shape[1]:
        _fail("gf", f"feature dim {qf.shape[1]} (as qf)", f"dim {gf.shape[1]}")
    dtype = torch.promote_types(qf.dtype, gf.dtype)
    return qf.to(dtype), gf.to(dtype)


def compute_distance_matrix(qf, gf, metric: str = "euclidean") -> torch.Tensor:
    """(Q, D) x (G, D) features -> (Q, G) distance matrix, computed in row chunks.

    Same signature and meaning as torchreid's: ``"euclidean"`` is the squared
    distance (clamped at 0 against round-off), ``"cosine"`` is 1 - cosine.
    """
    qf, gf = _feature_pair(qf, gf, metric)
    gal, out = _Gallery(gf, metric), qf.new_empty(qf.shape[0], gf.shape[0])   # out: (Q, G)
    for rows in _row_chunks(*out.shape, _BLOCK_CHUNKS):
        d = gal.scores(qf[rows], out=out[rows])                       # (B, G)
        if metric == "cosine":
            d.add_(1.0)
        else:
            d.add_(qf[rows].pow(2).sum(1, keepdim=True)).clamp_(min=0)
    return out


# ----------------------------------------------------------------------------- ranking core

class _SamePid:
    """Gallery indices grouped by identity (sorted order + per-pid start and count)."""

    def __init__(self, g_pids: torch.Tensor):
        self.order = torch.argsort(g_pids, stable=True)               # (G,)
        self.pids, self.counts = torch.unique_consecutive(g_pids[self.order], return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts      # (P,)

    def lookup(self, q_pids: torch.Tensor) -> torch.Tensor:
        """(B,) query pids -> (B, M) gallery indices of the same pid, -1 padded."""
        if len(self.pids) == 0:
            return q_pids.new_empty(len(q_pids), 0)
        pos = torch.searchsorted(self.pids, q_pids).clamp(max=len(self.pids) - 1)
        count = torch.where(self.pids[pos] == q_pids, self.counts[pos], 0)   # (B,)
        col = torch.arange(int(count.max()))
        idx = (self.starts[pos][:, None] + col).clamp(max=len(self.order) - 1)  # (B, M)
        return torch.where(col < count[:, None], self.order[idx], -1)


def _bucket_counts(d, thr, thr_max):
    """hist[q, k] = #{g : exactly k of the sorted thresholds thr[q] are < d[q, g]}, (B, M + 1).

    Items beyond a query's last real threshold (``thr_max``) change no rank;
    when they are most of the chunk, the rest is compacted and binary-searched
    (log2 M gathers); otherwise one batched ``searchsorted`` covers the chunk.
    """
    B, M = thr.shape
    near = d <= thr_max[:, None]                                      # (B, G)
    count = near.count_nonzero(1)                                     # (B,)
    if int(count.sum()) > _DENSE_FRACTION * d.numel():
        b = torch.searchsorted(thr, d, out_int32=True)                # (B, G)
        hist = torch.zeros(B, M + 1, dtype=torch.int32)
        return hist.scatter_add_(1, b.long(), torch.ones(1, dtype=torch.int32).expand_as(b))
    vals = d.masked_select(near)                                      # (n,) compacted
    row = torch.repeat_interleave(torch.arange(B), count)             # (n,)
    width = 1 << M.bit_length()                                       # power of two > M
    flat = torch.cat([thr, thr.new_full((B, width - M), float("inf"))], 1).flatten()
    base, pos, step = row * width, torch.zeros_like(row), width // 2
    while step:                                                       # branch-free binary search
        pos += step * (flat[base + pos + (step - 1)] < vals)
        step //= 2
    return torch.bincount(row * (M + 1) + pos, minlength=B * (M + 1)).view(B, M + 1)


def _market_chunk(d, q_cam, same_idx, g_cam, cross_camera: bool = True):
    """Per query of a chunk: first-match rank, AP and INP (market / nocam protocol).

    d: (B, G) distances to the non-junk gallery; same_idx: (B, M) gallery
    items sharing the query's pid (-1 padded). ``cross_camera``: only other
    cameras' items are true matches (market); otherwise all of them (nocam).
    Returns (B,) int64 first rank (0 = no valid match), (B,) float64 AP,
    (B,) float64 INP.
    """
    B, M = same_idx.shape
    if M == 0:
        zeros = torch.zeros(B, dtype=torch.float64)
        return torch.zeros(B, dtype=torch.long), zeros, zeros
    pad = same_idx < 0
    idx = same_idx.clamp(min=0)
    d_same = d.gather(1, idx).masked_fill_(pad, float("inf"))        # (B, M) same pid, any camera
    is_match = ~pad & (g_cam[idx] != q_cam[:, None]) if cross_camera else ~pad  # true matches
    thr = d_same.masked_fill(~is_match, float("inf")).sort(1).values  # (B, M) sorted match distances
    n = is_match.sum(1)                                               # (B,) matches per query
    hist = _bucket_counts(d, thr, d_same.masked_fill(~is_match, -float("inf")).amax(1))
    at_or_before = hist.cumsum(1)[:, :M]                              # (B, M) all items <= thr_k
    same_before = torch.searchsorted(d_same.sort(1).values, thr, right=True)  # (B, M) same pid <= thr_k
    k = torch.arange(1, M + 1)
    rank = (at_or_before - same_before + k).double()                  # (B, M) rank of k-th match
    valid_k = k <= n[:, None]
    n_safe = n.clamp(min=1).double()
    ap = torch.where(valid_k, k / rank, 0.0).sum(1) / n_safe
    inp = n_safe / rank.gather(1, (n - 1).clamp(min=0)[:, None])[:, 0]
    first = torch.where(n > 0, rank[:, 0].long(), 0)
    return first, torch.where(n > 0, ap, 0.0), torch.where(n > 0, inp, 0.0)


def _single_shot_chunk(d, q_pid, q_cam, g_pid, g_cam, g_group, num_groups, num_repeats, gen):
    """CUHK03 classic: per query, (B, R) rank of the sampled match over R draws.

    In each draw every gallery identity keeps one valid item, chosen as the
    one with the largest uniform key (a uniform draw within the identity).
    Rank 0 marks a query with no valid match.
    """
    B, G = d.shape
    if G == 0:
        return torch.zeros(B, num_repeats, dtype=torch.long)
    same = g_pid == q_pid[:, None]                                    # (B, G)
    valid = ~(same & (g_cam == q_cam[:, None]))
    has_match = (same & valid).any(1)                                 # (B,)
    group = g_group.expand(B, G)
    ranks = torch.zeros(B, num_repeats, dtype=torch.long)
    for r in range(num_repeats):
        key = torch.rand(B, G, generator=gen, dtype=torch.float64).masked_fill_(~valid, -1.0)
        best = key.new_full((B, num_groups), -2.0).scatter_reduce_(1, group, key, "amax")
        chosen = valid & (key == best.gather(1, group))               # (B, G) one per identity
        d_match = d.masked_fill(~(chosen & same), -float("inf")).amax(1)
        ranks[:, r] = ((d <= d_match[:, None]) & chosen & ~same).sum(1) + 1
    return torch.where(has_match[:, None], ranks, 0)


def _evaluate_rows(chunks, num_q, num_g, q_pids, g_pids, q_camids, g_camids, *,
                   max_rank, protocol, num_repeats, seed) -> RankResult:
    """Shared driver: ``chunks(G')`` yields (rows, (B, G') distances to the non-junk gallery)."""
    _check_choice(protocol, "protocol", PROTOCOLS)
    for name, value in (("max_rank", max_rank), ("num_repeats", num_repeats)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            _fail(name, "a positive int", repr(value))
    keep = g_pids != -1                                               # junk is ignored
    g_pids, g_camids = g_pids[keep], g_camids[keep]
    kind = PROTOCOLS[protocol]
    same_pid = _SamePid(g_pids)
    gen = torch.Generator().manual_seed(seed)
    groups, g_group = torch.unique(g_pids, return_inverse=True)
    firsts, aps, inps = [], [], []
    for rows, d in chunks(len(g_pids)):
        if kind != "single_shot":
            first, ap, inp = _market_chunk(d, q_camids[rows], same_pid.lookup(q_pids[rows]), g_camids,
                                           cross_camera=kind == "market")
            first = first[:, None]
        else:
            first = _single_shot_chunk(d, q_pids[rows], q_camids[rows], g_pids, g_camids,
                                       g_group, len(groups), num_repeats, gen)
            ap = inp = torch.where(first > 0, 1.0 / first.clamp(min=1).double(), 0.0).mean(1)
        firsts.append(first), aps.append(ap), inps.append(inp)
    return _summarise(torch.cat(firsts), torch.cat(aps), torch.cat(inps), min(max_rank, num_g))


def _summarise(first, ap, inp, max_rank: int, valid=None) -> RankResult:
    """(Q, R) first-match ranks (0 = none found), (Q,) AP and INP -> RankResult over valid queries.

    ``valid`` (default: queries with a match found) marks the queries that count.
    """
    num_q = len(first)
    valid = first[:, 0] > 0 if valid is None else valid
    num_valid = int(valid.sum())
    if num_valid == 0:
        nan = float("nan")
        return RankResult(np.full(max_rank, nan), nan, nan, 0, num_q)
    hits = torch.bincount(first[valid].clamp(max=max_rank + 1).flatten(), minlength=max_rank + 2)
    cmc = hits[1:max_rank + 1].cumsum(0).double() / first[valid].numel()
    return RankResult(cmc.numpy(), float(ap[valid].mean()), float(inp[valid].mean()),
                      num_valid, num_q - num_valid)


# ----------------------------------------------------------------------------- public evaluation

def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, *, max_rank: int = 50,
             protocol: str = "market", num_repeats: int = 10, seed: int = 0) -> RankResult:
    """CMC, mAP and mINP from a (Q, G) distance matrix (torch or numpy)."""
    dist = torch.from_numpy(np.asarray(distmat)) if not isinstance(distmat, torch.Tensor) else distmat
    if dist.dim() != 2 or 0 in dist.shape:
        _fail("distmat", "a non-empty 2-D (num_query, num_gallery) matrix", f"shape {tuple(dist.shape)}")
    dist = dist.cpu() if dist.is_floating_point() else dist.cpu().double()
    ids = _check_ids(q_pids, g_pids, q_camids, g_camids, *dist.shape)
    keep = (ids[1] != -1).nonzero()[:, 0]
    all_kept = len(keep) == dist.shape[1]

    def chunks(num_cols: int):
        for rows in _row_chunks(dist.shape[0], num_cols):
            _check_finite(dist[rows], f"distmat rows {rows.start}..{rows.stop - 1}")
            yield rows, dist[rows].contiguous() if all_kept else dist[rows].index_select(1, keep)

    return _evaluate_rows(chunks, *dist.shape, *ids, max_rank=max_rank, protocol=protocol,
                          num_repeats=num_repeats, seed=seed)


def evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, *, metric: str = "euclidean",
                      max_rank: int = 50, protocol: str = "market", num_repeats: int = 10,
                      seed: int = 0) -> RankResult:
    """Distances + ranks in one pass over query blocks; the (Q, G) matrix is never held whole."""
    qf, gf = _feature_pair(qf, gf, metric)
    ids = _check_ids(q_pids, g_pids, q_camids, g_camids, qf.shape[0], gf.shape[0])
    junk = ids[1] == -1
    gal = _Gallery(gf[~junk] if junk.any() else gf, metric)           # junk is never ranked

    def chunks(num_cols: int):  # one matmul per block, ranked chunk by chunk (same grid as evaluate)
        for block in _row_chunks(len(qf), num_cols, _BLOCK_CHUNKS):
            scores = gal.scores(qf[block])                            # (B_block, G')
            for sub in _row_chunks(len(scores), num_cols):
                yield slice(block.start + sub.start, block.start + sub.stop), scores[sub]

    return _evaluate_rows(chunks, qf.shape[0], gf.shape[0], *ids, max_rank=max_rank,
                          protocol=protocol, num_repeats=num_repeats, seed=seed)


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                  use_metric_cuhk03: bool = False, use_cython: bool = True, *,
                  protocol: str | None = None, num_repeats: int = 10, seed: int = 0):
    """torchreid's ``evaluate_rank``: returns ``(cmc, mAP)``, cmc a float array of length max_rank.

    ``use_metric_cuhk03=True`` means ``protocol="cuhk03_classic"``; ``use_cython``
    is accepted for compatibility and ignored (this code is pure PyTorch).
    """
    protocol = protocol or ("cuhk03_classic" if use_metric_cuhk03 else "market")
    res = evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank,
                   protocol=protocol, num_repeats=num_repeats, seed=seed)
    return res.cmc, res.mAP


def multi_query_pool(features, pids, camids, method: str = "mean"):
    """Market-1501 multi-query: pool the features of each (pid, camid) group.

    Returns (pooled (U, D) tensor, pids (U,), camids (U,) numpy arrays), groups
    sorted by (pid, camid).
    """
    f = _as_features(features, "features")
    pids, camids = _as_ids(pids, "pids", len(f)), _as_ids(camids, "camids", len(f))
    _check_choice(method, "method", ("mean", "max"))
    keys, group = torch.unique(torch.stack([pids, camids], 1), dim=0, return_inverse=True)
    index = group[:, None].expand_as(f).to(f.device)                  # (N, D)
    pooled = f.new_zeros(len(keys), f.shape[1])                       # (U, D)
    if method == "mean":
        counts = torch.bincount(group, minlength=len(keys)).to(f)
        pooled = pooled.scatter_add_(0, index, f) / counts[:, None]
    else:
        pooled = pooled.scatter_reduce_(0, index, f, "amax", include_self=False)
    return pooled, keys[:, 0].numpy(), keys[:, 1].numpy()


# ----------------------------------------------------------------------------- model evaluation

def evaluate_model(model, query_loader, gallery_loader, *, metric: str = "euclidean",
                   rerank: bool = False, flip: bool = False, protocol: str = "market",
                   multi_query: str | None = None, max_rank: int = 50, normalize: bool = False,
                   device=None, amp: bool | None = None, progress: bool = True,
                   k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                   num_repeats: int = 10, seed: int = 0, optimize: bool = True) -> RankResult:
    """Extract query/gallery features (:func:`extract_features`) and evaluate them.

    ``multi_query`` ("mean" / "max") pools query features per (pid, camid);
    ``rerank`` applies k-reciprocal re-ranking (``hacnn.reranking``) with k1, k2, lambda.
    """
    net, _ = inference_net(model, optimize)                           # one optimised copy for both
    extract = dict(device=device, flip=flip, amp=amp, progress=progress, normalize=normalize,
                   optimize=optimize)
    qf, q_pids, q_camids = extract_features(net, query_loader, **extract)
    gf, g_pids, g_camids = extract_features(net, gallery_loader, **extract)
    if multi_query is not None:
        qf, q_pids, q_camids = multi_query_pool(qf, q_pids, q_camids, method=multi_query)
    opts = dict(max_rank=max_rank, protocol=protocol, num_repeats=num_repeats, seed=seed)
    if not rerank:
        return evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric, **opts)
    dist = re_ranking(compute_distance_matrix(qf, gf, metric), compute_distance_matrix(qf, qf, metric),
                      compute_distance_matrix(gf, gf, metric), k1=k1, k2=k2, lambda_value=lambda_value)
    return evaluate(dist, q_pids, g_pids, q_camids, g_camids, **opts)
