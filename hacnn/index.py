"""A FAISS gallery index for galleries too large for the exact (Q, G) distance matrix.

Modes (``GalleryIndex(dim, mode, **params)``, needs the ``faiss`` extra):

- ``"exact"``: a flat index, every gallery vector scored (Johnson et al.,
  "Billion-scale similarity search with GPUs", 2017: FAISS).
- ``"ivf"``: inverted lists over a k-means coarse quantiser of ``nlist``
  cells, ``nprobe`` cells scanned per query (IVF-Flat), or with product-
  quantised codes of ``pq_m`` bytes per vector (IVF-PQ, Jegou et al., TPAMI
  2011); needs :meth:`GalleryIndex.train` on a sample first.
- ``"hnsw"``: a hierarchical navigable small-world graph (Malkov & Yashunin,
  TPAMI 2018) with ``M`` links per node, ``ef_construction`` / ``ef_search``
  candidate lists.

Metrics and the package's features: ``metric="cosine"`` (default) L2-
normalises every whole vector (gallery and queries) and searches by inner
product; ``search`` returns the package's cosine distance ``1 - <q, g>``.
For unit vectors ``|q - g|^2 = 2 - 2 <q, g>``, so the ranking is also the
euclidean ranking of the normalised vectors. HA-CNN's eval feature is two
L2-normalised 512-d halves (``normalize_features=True``): every feature has
norm sqrt(2), so normalising the whole 1024-d vector only divides it by
sqrt(2) and the ranking equals that of the package's default evaluation
(``metric="euclidean"``, squared distance = 4 x the cosine distance here).
For features of varying norm (``normalize_features=False``) use
``metric="euclidean"``: no normalisation, squared L2 distances, the same
ranking as ``compute_distance_matrix(qf, gf, "euclidean")``.

:func:`evaluate_with_index` ranks each query's ``k`` nearest gallery items
with the package's Market-1501 protocol and its **pessimistic ties** (a non-
match at a true match's distance is ranked before it). When ``k`` covers
the gallery and the search is exact, the result equals
:func:`hacnn.evaluation.evaluate_features` (to float rounding of distances);
with a smaller ``k`` or an approximate mode, matches not retrieved count as
misses, so CMC, mAP and mINP are lower bounds of the exact ones.

``python -m hacnn index --features gallery.npz --out gallery.faiss --mode hnsw``
(:func:`build_index`, :func:`run_index`) builds an index over every row of an
``extract`` ``.npz`` in order (ids = rows, as ``search --index`` expects) and
saves it atomically.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .evaluation import (METRICS, RankResult, _as_features, _check_choice, _check_ids, _fail,
                         _row_chunks, _SamePid, _summarise)

__all__ = ["IndexConfig", "GalleryIndex", "estimate_memory", "evaluate_with_index", "build_index",
           "add_index_arguments", "run_index"]

MODES = ("exact", "ivf", "hnsw")
MODE_PARAMS = {"exact": (), "ivf": ("nlist", "nprobe", "pq_m", "pq_bits"),
               "hnsw": ("M", "ef_construction", "ef_search")}
SEARCH_PARAMS = ("nprobe", "ef_search")
_ADD_BLOCK = 1 << 16     # rows normalised and added at a time (bounded temporary copies)
_FORMAT = "hacnn-gallery-index/1"


@dataclass(frozen=True)
class IndexConfig:
    """Index kind and parameters (those of other modes are left at their defaults)."""

    mode: str = "exact"
    metric: str = "cosine"       # "cosine": normalised, inner product; "euclidean": squared L2
    nlist: int = 1024            # ivf: k-means cells
    nprobe: int = 16             # ivf: cells scanned per query (nprobe = nlist: exhaustive)
    pq_m: int = 0                # ivf: 0 = IVF-Flat; else PQ bytes per vector (must divide dim)
    pq_bits: int = 8             # ivf-pq: bits per sub-quantiser code
    M: int = 32                  # hnsw: links per node
    ef_construction: int = 80    # hnsw: candidate list while building
    ef_search: int = 64          # hnsw: candidate list while searching (>= k is useful)

    def factory(self) -> str:
        """The FAISS index_factory string."""
        if self.mode == "ivf":
            return f"IVF{self.nlist}," + (f"PQ{self.pq_m}x{self.pq_bits}" if self.pq_m else "Flat")
        return f"HNSW{self.M},Flat" if self.mode == "hnsw" else "Flat"


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ImportError("hacnn.index needs FAISS: pip install -e '.[faiss]' (faiss-cpu)") from err
    return faiss


def _make_config(dim, mode: str, params: dict) -> IndexConfig:
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        _fail("dim", "a positive int (the feature size)", repr(dim))
    _check_choice(mode, "mode", MODES)
    allowed = ("metric",) + MODE_PARAMS[mode]
    for name in params:
        if name not in allowed:
            _fail(f"parameter {name!r}", f"one of {list(allowed)} for mode {mode!r}", repr(name))
    cfg = IndexConfig(mode=mode, **params)
    _check_choice(cfg.metric, "metric", METRICS)
    for name in MODE_PARAMS[mode]:
        value, low = getattr(cfg, name), 0 if name == "pq_m" else 1
        if not isinstance(value, (int, np.integer)) or value < low:
            _fail(name, f"an int >= {low}", repr(value))
    if cfg.mode == "ivf" and cfg.pq_m and dim % cfg.pq_m:
        _fail("pq_m", f"a divisor of the feature size {dim}", repr(cfg.pq_m))
    return cfg


def estimate_memory(num_vectors: int, dim: int, mode: str = "exact", **params) -> int:
    """Approximate bytes an index of ``num_vectors`` holds (vectors, codes, lists, graph, id map).

    exact: 4 d per vector; IVF-Flat: 4 d + 8 (list id) + centroids; IVF-PQ:
    ``pq_m * pq_bits / 8`` + 8 + centroids + codebooks; HNSW: 4 d + ~8 M
    (level-0 links of 2 M int32, upper levels ~1/M of that) + 16 of offsets.
    Excludes FAISS's temporary search buffers. Plus 8 per vector for the id map.
    """
    cfg = _make_config(dim, mode, params)
    n, vec = int(num_vectors), 4 * dim
    if cfg.mode == "exact":
        size = n * vec
    elif cfg.mode == "hnsw":
        size = n * (vec + 4 * 2 * cfg.M * (1 + 1 / (cfg.M - 1)) + 16) if cfg.M > 1 else n * (vec + 24)
    else:
        code = cfg.pq_m * cfg.pq_bits // 8 if cfg.pq_m else vec
        books = dim * (1 << cfg.pq_bits) * 4 if cfg.pq_m else 0
        size = n * (code + 8) + cfg.nlist * vec + books
    return int(size) + 8 * n


class GalleryIndex:
    """Gallery features in a FAISS index: ``add``, ``search``, ``save`` / ``load``.

    ``GalleryIndex(1024)`` (exact), ``GalleryIndex(1024, "ivf", nlist=1024,
    nprobe=32)`` (then ``train(sample)``), ``GalleryIndex(1024, "hnsw", M=32)``.
    Inputs are (N, dim) numpy arrays or torch tensors on any device (searched
    on the CPU in float32).
    """

    def __init__(self, dim: int, mode: str = "exact", **params):
        self.config = _make_config(dim, mode, params)
        self.dim = int(dim)
        faiss = _faiss()
        metric = faiss.METRIC_INNER_PRODUCT if self.config.metric == "cosine" else faiss.METRIC_L2
        self._index = faiss.index_factory(self.dim, self.config.factory(), metric)
        if mode == "hnsw":
            self._index.hnsw.efConstruction = self.config.ef_construction
        elif mode == "ivf" and self.config.pq_m:   # the factory's polysemous codes: unused, slow to train
            faiss.downcast_index(faiss.extract_index_ivf(self._index)).do_polysemous_training = False
        self._ids = np.empty(0, dtype=np.int64)     # position in the index -> caller's id
        self.set_params()

    # ------------------------------------------------------------------ state
    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def __repr__(self) -> str:
        return f"GalleryIndex(dim={self.dim}, {self.config.factory()}, {self.config.metric}, ntotal={self.ntotal})"

    def memory_bytes(self) -> int:
        """Approximate bytes held now (:func:`estimate_memory` at the current size)."""
        params = {k: getattr(self.config, k) for k in ("metric",) + MODE_PARAMS[self.mode]}
        return estimate_memory(self.ntotal, self.dim, self.mode, **params)

    def set_params(self, **search_params) -> "GalleryIndex":
        """Change search-time parameters (``nprobe`` for ivf, ``ef_search`` for hnsw)."""
        for name in search_params:
            if name not in SEARCH_PARAMS or name not in MODE_PARAMS[self.mode]:
                allowed = [p for p in SEARCH_PARAMS if p in MODE_PARAMS[self.mode]]
                _fail(f"search parameter {name!r}", f"one of {allowed} for mode {self.mode!r}", repr(name))
        cfg = _make_config(self.dim, self.mode, {**self._params(), **search_params})
        self.config = cfg
        if self.mode == "ivf":
            _faiss().extract_index_ivf(self._index).nprobe = min(cfg.nprobe, cfg.nlist)
        elif self.mode == "hnsw":
            self._index.hnsw.efSearch = cfg.ef_search
        return self

    def _params(self) -> dict:
        return {k: getattr(self.config, k) for k in ("metric",) + MODE_PARAMS[self.mode]}

    # ------------------------------------------------------------------ build
    def _prepare(self, x, name: str) -> np.ndarray:
        """Checked (N, dim) float32 C-contiguous numpy rows; unit rows for the cosine metric."""
        t = _as_features(x, name)
        if t.shape[1] != self.dim:
            _fail(name, f"(N, {self.dim}) features (this index was built for feature size {self.dim})",
                  f"shape {tuple(t.shape)}")
        a = np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())
        if self.config.metric == "cosine":
            norms = np.linalg.norm(a, axis=1, keepdims=True)          # (N, 1)
            if not norms.all():
                rows = np.flatnonzero(norms[:, 0] == 0)
                _fail(name, "no all-zero rows (a zero vector has no direction for the cosine metric)",
                      f"{len(rows)} zero rows, first at row {rows[0]}")
            a = a / norms
        return a

    def train(self, sample) -> "GalleryIndex":
        """Train the IVF coarse quantiser (and PQ codebooks) on a (N, dim) sample; no-op otherwise.

        Needs at least ``nlist`` rows (and ``2 ** pq_bits`` for PQ); FAISS
        advises 30-256 rows per cell.
        """
        a = self._prepare(sample, "sample")
        if self.mode == "ivf":
            need = max(self.config.nlist, (1 << self.config.pq_bits) if self.config.pq_m else 0)
            if len(a) < need:
                _fail("sample", f"at least {need} rows to train {self.config.factory()}", f"{len(a)} rows")
            self._index.train(a)
        return self

    def add(self, features, ids=None) -> "GalleryIndex":
        """Add (N, dim) gallery features; ``ids`` (N,) ints >= 0 returned by search (default: 0, 1, ...)."""
        if not self.is_trained:
            _fail("GalleryIndex.add", f"a trained index: call .train(sample) first ({self.config.factory()})",
                  "an untrained index")
        n = len(_as_features(features, "features"))
        if ids is None:
            new_ids = np.arange(self.ntotal, self.ntotal + n, dtype=np.int64)
        else:
            new_ids = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids)
            if new_ids.shape != (n,) or new_ids.dtype.kind not in "iu" or (n and new_ids.min() < 0):
                _fail("ids", f"a 1-D array of {n} non-negative ints", f"shape {new_ids.shape}, dtype {new_ids.dtype}")
        block = _ADD_BLOCK // 16 if self.config.pq_m else _ADD_BLOCK   # PQ encodes via rows x 64 KiB tables
        for start in range(0, n, block):        # normalised copies one block at a time
            self._index.add(self._prepare(features[start:start + block], "features"))
        self._ids = np.concatenate([self._ids, new_ids.astype(np.int64)])
        return self

    # ------------------------------------------------------------------ search
    def search(self, queries, k: int):
        """(Q, dim) queries -> ((Q, k) float32 distances, ascending; (Q, k) int64 ids).

        Distances mean what :func:`hacnn.evaluation.compute_distance_matrix`
        returns for the metric (cosine: 1 - cosine; euclidean: squared). An
        approximate search that finds fewer than k items pads with id -1 and
        distance inf.
        """
        if self.ntotal == 0:
            _fail("GalleryIndex.search", "an index holding gallery features (call .add first)", "an empty index")
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= self.ntotal:
            _fail("k", f"an int in [1, {self.ntotal}] (the index size)", repr(k))
        q = self._prepare(queries, "queries")
        dist, pos = self._index.search(q, int(k))                    # (Q, k) each
        found = pos >= 0
        if self.config.metric == "cosine":
            dist = 1.0 - dist                                         # inner product -> cosine distance
        dist = np.where(found, dist, np.float32(np.inf)).astype(np.float32)
        ids = np.where(found, self._ids[np.where(found, pos, 0)], -1)
        return torch.from_numpy(dist), torch.from_numpy(ids)

    # ------------------------------------------------------------------ files
    def save(self, path) -> None:
        """Write the index, ids and config to ``path`` (atomically: a temp file, then os.replace)."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            _fail("path", "a file in an existing folder", f"{path!r} (no folder {folder!r})")
        meta = json.dumps({"format": _FORMAT, "dim": self.dim, "config": dataclasses.asdict(self.config)})
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-index-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, meta=np.array(meta), ids=self._ids, faiss=_faiss().serialize_index(self._index))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def load(cls, path, dim: int | None = None, mode: str | None = None) -> "GalleryIndex":
        """Read an index written by :meth:`save`; ``dim`` / ``mode``, if given, must match it."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GalleryIndex.load: no index file at {path!r}")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta, ids, blob = json.loads(str(z["meta"])), z["ids"], z["faiss"]
            assert meta["format"] == _FORMAT, f"format {meta['format']!r}"
            cfg = IndexConfig(**meta["config"])
        except Exception as err:
            raise ValueError(f"GalleryIndex.load: {path!r} is not a hacnn gallery index "
                             f"(expected a file written by GalleryIndex.save): {err}") from None
        if dim is not None and meta["dim"] != dim:
            _fail(f"index {path!r}", f"an index for feature size {dim}", f"feature size {meta['dim']}")
        if mode is not None and cfg.mode != mode:
            _fail(f"index {path!r}", f"a {mode!r} index", f"a {cfg.mode!r} index")
        self = cls.__new__(cls)
        self.dim, self.config = meta["dim"], cfg
        self._index, self._ids = _faiss().deserialize_index(blob), ids.astype(np.int64)
        if self._index.d != self.dim or self._index.ntotal != len(ids):
            raise ValueError(f"GalleryIndex.load: {path!r} is inconsistent (FAISS index of size "
                             f"{self._index.d} x {self._index.ntotal}, {len(ids)} ids, dim {self.dim})")
        return self.set_params()


# ----------------------------------------------------------------------------- evaluation

def evaluate_with_index(index: GalleryIndex, qf, q_pids, g_pids, q_camids, g_camids, *,
                        k: int | None = None, max_rank: int = 50) -> RankResult:
    """CMC / mAP / mINP (Market-1501 protocol) from each query's ``k`` nearest gallery items.

    Arguments in :func:`hacnn.evaluation.evaluate_features`' order; the index's
    ids are positions in ``g_pids`` / ``g_camids`` (the default ids of one
    ``add`` of the whole gallery). ``k`` defaults to the whole index (exact
    metrics for an exact index). The rank of a query's j-th retrieved true
    match is ``j + #{retrieved valid non-matches at distance <= its own}``
    (pessimistic ties, as the package); AP divides by all the query's true
    matches in the gallery, so matches not retrieved count as misses. The CMC
    curve has ``min(max_rank, k)`` entries.
    """
    ids = _check_ids(q_pids, g_pids, q_camids, g_camids, len(_as_features(qf, "qf")), index.ntotal)
    q_pids, g_pids, q_camids, g_camids = ids
    k = index.ntotal if k is None else k
    if not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        _fail("max_rank", "a positive int", repr(max_rank))
    if index.ntotal and int(index._ids.max()) >= index.ntotal:
        _fail("index ids", f"gallery positions in [0, {index.ntotal})", f"max id {int(index._ids.max())}")
    same_pid = _SamePid(g_pids)
    steps = torch.arange(1, k + 1)                                    # (k,) j = 1..k
    firsts, aps, inps, totals = [], [], [], []
    for rows in _row_chunks(len(q_pids), k):
        dist, gal = index.search(qf[rows], k)                          # (B, k) ascending
        qp, qc = q_pids[rows, None], q_camids[rows, None]
        idx = same_pid.lookup(q_pids[rows])                           # (B, M) same pid, -1 padded
        c = idx.clamp(min=0)
        total = ((idx >= 0) & (g_camids[c] != qc) & (g_pids[c] != -1)).sum(1)   # (B,) true matches
        found, g = gal >= 0, gal.clamp(min=0)
        same = found & (g_pids[g] == qp)
        valid = found & (g_pids[g] != -1) & ~(same & (g_camids[g] == qc))
        d_match = dist.masked_fill(~(valid & same), float("inf")).sort(1).values   # (B, k)
        d_other = dist.masked_fill(~(valid & ~same), float("inf")).sort(1).values  # (B, k)
        rank = torch.searchsorted(d_other, d_match, right=True) + steps          # (B, k) j-th match
        got = steps <= (valid & same).sum(1, keepdim=True)           # (B, k) j-th match retrieved
        t = total.clamp(min=1)
        aps.append(torch.where(got, steps / rank.double(), 0.0).sum(1) / t)
        last = rank.gather(1, (t - 1).clamp(max=k - 1)[:, None])[:, 0]
        all_got = got.gather(1, (t - 1).clamp(max=k - 1)[:, None])[:, 0] & (total <= k)
        inps.append(torch.where(all_got, t / last.double(), 0.0))
        firsts.append(torch.where(got[:, 0], rank[:, 0], 0)[:, None]), totals.append(total)
    return _summarise(torch.cat(firsts), torch.cat(aps), torch.cat(inps), min(max_rank, k),
                      valid=torch.cat(totals) > 0)


# ----------------------------------------------------------------------------- command line

def build_index(features, mode: str = "exact", **params) -> GalleryIndex:
    """A :class:`GalleryIndex` over all (N, dim) rows in order (ids 0..N-1), trained on them for ivf."""
    feats = _as_features(features, "features")
    index = GalleryIndex(feats.shape[1], mode, **params)
    cfg = index.config
    need = max(cfg.nlist, (1 << cfg.pq_bits) if cfg.pq_m else 0) if mode == "ivf" else 1
    if len(feats) < need:
        _fail("features", f"at least {need} vectors to train {cfg.factory()} (nlist = {cfg.nlist}"
              + (f", 2^pq_bits = {1 << cfg.pq_bits}" if cfg.pq_m else "") + "; FAISS advises 30-256 per "
              "cell): lower nlist / pq_bits, or use mode exact or hnsw", f"{len(feats)} vectors")
    return index.train(feats).add(feats)


_FLAGS = {"nlist": ("--nlist", "ivf: k-means cells"), "nprobe": ("--nprobe", "ivf: cells scanned per query"),
          "pq_m": ("--pq-m", "ivf: PQ bytes per vector, a divisor of the feature size (0: IVF-Flat)"),
          "pq_bits": ("--pq-bits", "ivf-pq: bits per code"), "M": ("--hnsw-m", "hnsw: links per node"),
          "ef_construction": ("--ef-construction", "hnsw: candidate list while building"),
          "ef_search": ("--ef-search", "hnsw: candidate list while searching")}


def add_index_arguments(p) -> None:
    """``python -m hacnn index`` options (defaults: :class:`IndexConfig`'s)."""
    d = IndexConfig()
    p.add_argument("--features", type=Path, required=True, help="gallery .npz of `python -m hacnn extract`")
    p.add_argument("--out", type=Path, required=True, help="index file to write (e.g. gallery.faiss)")
    p.add_argument("--mode", choices=MODES, default=d.mode, help="exact (flat, default), ivf (IVF-Flat, "
                   "or IVF-PQ with --pq-m; trained on the features) or hnsw")
    p.add_argument("--metric", choices=METRICS, default=None, help=f"default: {d.metric} (normalised, "
                   "inner product; ranks as euclidean for features of one norm, as HA-CNN's)")
    for name, (flag, text) in _FLAGS.items():
        p.add_argument(flag, dest=name, type=int, default=None, help=f"{text} (default: {getattr(d, name)})")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(func=run_index)


def run_index(args) -> int:
    """``index``: a :class:`GalleryIndex` over a features ``.npz`` into ``--out`` (never over one without --force)."""
    from .checkpoint import atomic_path
    from .features import load_features

    out = Path(args.out)
    if out.is_dir() or (out.exists() and not args.force):
        raise FileExistsError(f"{out} " + ("is a folder" if out.is_dir() else "exists; pass --force to overwrite it"))
    other = [_FLAGS[n][0] for n in _FLAGS if n not in MODE_PARAMS[args.mode] and getattr(args, n) is not None]
    if other:
        raise ValueError(f"{other[0]}: not an option of --mode {args.mode}")
    feats = load_features(args.features).features
    params = {n: getattr(args, n) for n in ("metric",) + MODE_PARAMS[args.mode] if getattr(args, n) is not None}
    start = time.perf_counter()
    index = build_index(feats, args.mode, **params)
    seconds = time.perf_counter() - start
    with atomic_path(out) as tmp:
        index.save(tmp)
    size = out.stat().st_size
    print(f"wrote {out}: {index.ntotal} vectors x {index.dim}-d, {args.mode} ({index.config.factory()}, "
          f"{index.config.metric}), built in {seconds:.1f} s, "
          + (f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 1024:.0f} KiB"))
    return 0
