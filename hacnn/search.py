"""Search a gallery for query images: ranked lists, a CSV and one figure per query.

``python -m hacnn search --weights W --query IMG [IMG ...] --gallery DIR|feats.npz``
is :func:`search_gallery`. The ranking itself is :func:`rank`, which takes the
gallery as a (G, D) feature matrix or as any object with a
``search(queries, k) -> (distances, indices)`` method (a nearest-neighbour
index), so an index can stand in for the brute-force matrix. Distances are
those of :func:`hacnn.evaluation.compute_distance_matrix` (``"euclidean"``:
squared, as in evaluation); ties keep the gallery order. ``rerank=True``
applies k-reciprocal re-ranking (:mod:`hacnn.reranking`, Zhong et al. 2017)
over the whole gallery matrix.

A FAISS index (``--index PATH``, ``index=``): a :class:`hacnn.index.GalleryIndex`
saved over the features of the gallery ``.npz`` (its ids are the ``.npz``'s
rows, as one ``GalleryIndex(d).add(features)`` gives; the ``.npz`` names the
files) proposes each query's ``k`` nearest, and the distances of those ``k``
are then computed from the ``.npz`` features with the exact path's formula
(:func:`~hacnn.evaluation.compute_distance_matrix`) and sorted stably. A
``"cosine"`` index scores inner products of the L2-normalised vectors,
``s = <q/|q|, g/|g|>`` (it returns ``1 - s``), and
``|q - g|^2 = |q|^2 + |g|^2 - 2 |q| |g| s``: ``2 - 2s`` for unit vectors,
``4 - 4s`` for HA-CNN's eval features (two unit halves, ``|f|^2 = 2``). So
its ranking is the squared euclidean one exactly when every gallery feature
has one norm, checked (to :data:`NORM_TOLERANCE`) whenever the index's metric
is not ``metric``. An exact index thus gives the exact path's list and
distances, ties in the gallery order too (which of several items tied at the
k-th distance is retrieved is FAISS's choice); an approximate one may miss
items (none found: row -1, distance inf, not written). ``shortlist=n``
(``--shortlist N``) asks the index for ``n >= k`` candidates and keeps the ``k``
nearest by their exact distances: the approximate index only has to put a
true neighbour among its ``n``, not in its own top ``k`` (FAISS's "refine"
step; what it buys for IVF-PQ is measured in ``benchmarks/bench_index.py``). ``k`` above the
index size, an index of another feature size or over other rows, and
``rerank`` (it needs the full G x G matrix) are errors, raised before
anything is written.
"""
from __future__ import annotations

import csv
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_path
from .evaluation import _as_features, compute_distance_matrix
from .features import FolderFeatures, extract_folder, extract_images, load_features, model_digest

__all__ = ["rank", "check_index", "search_gallery", "SearchResult", "CSV_NAME", "CSV_COLUMNS",
           "add_search_arguments", "NORM_TOLERANCE"]

CSV_NAME = "ranking.csv"
CSV_COLUMNS = ("query", "rank", "gallery", "distance", "query_pid", "gallery_pid")
NORM_TOLERANCE = 1e-2     # relative spread of gallery norms under which cosine and euclidean rank alike


def rank(query_features, gallery, k: int = 10, *, metric: str = "euclidean", rerank: bool = False,
         k1: int = 20, k2: int = 6, lambda_value: float = 0.3, index=None,
         shortlist: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest gallery items of each query: ``(distances (Q, k), indices (Q, k))``.

    ``gallery``: a (G, D) matrix (numpy or torch), or an object with
    ``search(queries, k)`` (its own distances; ``rerank`` needs the matrix).
    ``k`` is capped at G. ``index``: a :class:`~hacnn.index.GalleryIndex` over
    the rows of the matrix ``gallery`` (module docstring; :func:`check_index`);
    ``shortlist``: the candidates taken from ``index`` before the exact ranking
    (at least ``k``; capped at the gallery's size; default ``k``).
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected a positive int, received {k!r}")
    _check_shortlist(shortlist, k, index)
    if index is not None:
        return _rank_with_index(query_features, gallery, index, int(k), metric, rerank, shortlist)
    if hasattr(gallery, "search") and not isinstance(gallery, (np.ndarray, torch.Tensor)):
        if rerank:
            raise ValueError("rerank: re-ranking needs the gallery feature matrix, not an index")
        own = getattr(getattr(gallery, "config", None), "metric", metric)
        if own != metric:
            raise ValueError(f"metric: a {own!r} GalleryIndex gives {own} distances, not {metric!r} ones: "
                             f"pass metric={own!r}, or the gallery features with index= (exact distances)")
        d, i = gallery.search(np.asarray(query_features, dtype=np.float32), k)
        return np.asarray(d), np.asarray(i)
    qf, gf = query_features, gallery                                  # numpy or torch, checked there
    dist = compute_distance_matrix(qf, gf, metric).cpu()              # (Q, G)
    if rerank:
        from .reranking import re_ranking

        dist = re_ranking(dist, compute_distance_matrix(qf, qf, metric),
                          compute_distance_matrix(gf, gf, metric), k1=k1, k2=k2, lambda_value=lambda_value)
    k = min(int(k), dist.shape[1])
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]      # (Q, k), ties: gallery order
    return dist.gather(1, order).numpy(), order.numpy()


def _check_shortlist(shortlist, k: int, index) -> None:
    if shortlist is None:
        return
    if index is None:
        raise ValueError("shortlist: it is the number of candidates taken from an index; pass index= "
                         "(--index) or drop it (the exact path ranks the whole gallery)")
    if not isinstance(shortlist, (int, np.integer)) or shortlist < k:
        raise ValueError(f"shortlist: expected an int >= k ({k}), the candidates ranked exactly, "
                         f"received {shortlist!r}")


def check_index(index, gallery_features, k: int, *, metric: str = "euclidean", rerank: bool = False) -> None:
    """Refuse an index that does not fit the gallery ``(G, D)`` features or the request (ValueError)."""
    if rerank:
        raise ValueError("rerank: k-reciprocal re-ranking needs the full query-gallery and gallery-gallery "
                         "distance matrices, not an index's top k: drop --index (exact search) or --rerank")
    gf = _as_features(gallery_features, "gallery features")
    size, dim = gf.shape
    if index.dim != dim:
        raise ValueError(f"index: expected an index for feature size {dim} (the gallery's), received one "
                         f"for feature size {index.dim}: build it from these gallery features")
    ids = np.sort(index._ids)
    if index.ntotal != size or not np.array_equal(ids, np.arange(size)):
        raise ValueError(f"index: expected the {size} gallery rows as its ids (one add of the whole gallery "
                         f"features), received {index.ntotal} vectors with ids "
                         f"{int(ids[0]) if len(ids) else '-'}..{int(ids[-1]) if len(ids) else '-'}: "
                         "build it from this gallery .npz")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= size:
        raise ValueError(f"topk: expected at most {size}, the size of the gallery index, received {k!r}")
    if index.config.metric != metric:
        norms = torch.linalg.vector_norm(gf.float(), dim=1)           # (G,)
        spread = float((norms.max() - norms.min()) / norms.max().clamp(min=1e-12))
        if spread > NORM_TOLERANCE:
            raise ValueError(f"index: a {index.config.metric!r} index ranks as the {metric!r} metric only for "
                             f"gallery features of one norm, these vary by {spread:.1%} (norms "
                             f"{float(norms.min()):.4g} to {float(norms.max()):.4g}): search with metric "
                             f"{index.config.metric!r} or build the index with metric={metric!r}")


def _rank_with_index(qf, gallery, index, k: int, metric: str, rerank: bool, shortlist: int | None = None):
    """The index's candidates per query (``shortlist`` of them, else ``k``), their exact ``metric``
    distances, sorted stably; the ``k`` nearest."""
    check_index(index, gallery, k, metric=metric, rerank=rerank)
    qf, gf = _as_features(qf, "qf"), _as_features(gallery, "gallery features")
    n = min(shortlist or k, index.ntotal)                            # rank() checked shortlist >= k
    _, found = index.search(qf, n)                                    # (Q, n) gallery rows, -1: none
    found = found.sort(dim=1).values                                  # row order: ties stay in it
    dist = torch.full(found.shape, float("inf"))                      # (Q, n)
    for a, rows in enumerate(found):                                  # the exact path's formula, per query
        ok = rows >= 0
        dist[a, ok] = compute_distance_matrix(qf[a:a + 1], gf[rows[ok]], metric)[0].float()
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]       # (Q, k) ascending, then by row
    return dist.gather(1, order).numpy(), found.gather(1, order).numpy()


@dataclass
class SearchResult:
    """Ranked lists of :func:`search_gallery` (rows of the CSV) and the files written."""

    queries: FolderFeatures
    gallery: FolderFeatures
    distances: np.ndarray            # (Q, k)
    indices: np.ndarray              # (Q, k) rows of gallery
    csv_path: Path | None = None
    figures: tuple[Path, ...] = ()

    def rows(self) -> list[dict]:
        q, g = self.queries, self.gallery
        pid = lambda f, i: int(f.pids[i]) if f.has_id[i] else ""     # noqa: E731
        return [{"query": q.paths[a], "rank": r + 1, "gallery": g.paths[b],
                 "distance": f"{self.distances[a, r]:.6g}", "query_pid": pid(q, a), "gallery_pid": pid(g, b)}
                for a in range(len(q.paths)) for r, b in enumerate(self.indices[a]) if b >= 0]


def _gallery(model, gallery, **extract) -> FolderFeatures:
    """A gallery ``.npz`` (checked against the model) or a folder extracted now."""
    if isinstance(gallery, FolderFeatures):
        g = gallery
    elif Path(gallery).is_dir():
        return extract_folder(model, gallery, **extract)
    else:
        g = load_features(gallery, feature_dim=model.feature_dim)
    if g.features.shape[1] != model.feature_dim:
        raise ValueError(f"gallery holds {g.features.shape[1]}-d features, the model gives "
                         f"{model.feature_dim}-d ones")
    if g.digest and g.digest != model_digest(model):
        warnings.warn("the gallery features were extracted with other weights than these; "
                      "their distances to the queries mean little", RuntimeWarning, stacklevel=3)
    return g


def search_gallery(weights, queries, gallery, out=None, *, topk: int = 10, metric: str = "euclidean",
                   rerank: bool = False, gallery_root=None, figures: bool = True, force: bool = False,
                   batch_size: int = 64, device=None, precision: str = "auto", flip: bool = False,
                   progress: bool = True, index=None, shortlist: int | None = None) -> SearchResult:
    """Rank ``gallery`` (a folder, an ``extract`` ``.npz`` or :class:`FolderFeatures`) for each query image.

    Writes ``out/ranking.csv`` (columns :data:`CSV_COLUMNS`; pids empty where a
    file name carries none) and ``out/query-NNN-<name>.png`` per query
    (:func:`hacnn.viz.plot_ranked_list`; green/red frames where both ids are
    known). Queries are extracted in the gallery's precision. ``gallery_root``
    overrides the image folder an ``.npz`` recorded (for the figures).
    An existing ``ranking.csv`` in ``out`` is kept unless ``force``.
    ``index``: a :class:`~hacnn.index.GalleryIndex` (or the file it saved)
    over the rows of the gallery ``.npz`` / :class:`FolderFeatures`, searched
    instead of every vector (module docstring: the same list as the exact
    path for an exact index; checked before the queries are extracted);
    ``shortlist``: its candidates per query, ranked exactly (see :func:`rank`).
    """
    from .checkpoint import load_model

    out = None if out is None else Path(out)
    if out is not None and (out / CSV_NAME).exists() and not force:
        raise FileExistsError(f"{out / CSV_NAME} exists; pass --force to overwrite it")
    queries = [Path(q) for q in ([queries] if isinstance(queries, (str, os.PathLike)) else queries)]
    missing = [str(q) for q in queries if not q.is_file()]
    if not queries or missing:
        raise FileNotFoundError(f"query images not found: {', '.join(missing)}" if missing
                                else "no query image given")
    if index is not None and not isinstance(gallery, FolderFeatures) and Path(gallery).is_dir():
        raise ValueError(f"index: expected the gallery as the features .npz the index was built from "
                         f"(its rows are the index's ids), received the folder {str(gallery)!r}: "
                         "python -m hacnn extract it first")
    model = weights if isinstance(weights, torch.nn.Module) else load_model(weights)
    extract = dict(batch_size=batch_size, device=device, flip=flip, progress=progress)
    g = _gallery(model, gallery, precision=precision, **extract)
    if index is not None:
        if isinstance(index, (str, os.PathLike)):
            from .index import GalleryIndex
            index = GalleryIndex.load(index, dim=model.feature_dim)
        check_index(index, g.features, topk, metric=metric, rerank=rerank)
    _check_shortlist(shortlist, topk, index)                         # before the queries are extracted
    q = extract_images(model, queries, precision=g.precision, **extract)
    d, i = rank(q.features, g.features, topk, metric=metric, rerank=rerank, index=index, shortlist=shortlist)
    result = SearchResult(q, g, d, i)
    if out is None:
        return result
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader(), writer.writerows(result.rows())
    with atomic_path(out / CSV_NAME) as tmp:
        tmp.write_text(buf.getvalue())
    result.csv_path = out / CSV_NAME
    if figures:
        result.figures = _figures(result, out, Path(gallery_root or g.root))
    return result


def _figures(r: SearchResult, out: Path, root: Path) -> tuple[Path, ...]:
    import matplotlib.pyplot as plt

    from .viz import plot_ranked_list

    q, g, paths = r.queries, r.gallery, []
    for a, name in enumerate(q.paths):
        hits = [b for b in r.indices[a] if b >= 0]                    # an approximate index may find fewer
        files = [root / g.paths[b] for b in hits]
        lost = [str(f) for f in files if not f.is_file()]
        if lost:
            raise FileNotFoundError(f"gallery image {lost[0]} not found (the CSV is written); "
                                    f"pass the gallery's image folder as --gallery-root")
        known = q.has_id[a] and all(g.has_id[b] for b in hits)
        matches = [g.pids[b] == q.pids[a] for b in hits] if known else None
        titles = [f"{k + 1}: {r.distances[a, k]:.3f}" for k in range(len(files))]
        path = out / f"query-{a:03d}-{Path(name).stem}.png"
        fig = plot_ranked_list(name, files, matches, topk=len(files), path=path,
                               query_title=Path(name).name[:14], gallery_titles=titles)
        plt.close(fig)
        paths.append(path)
    return tuple(paths)


def add_search_arguments(p) -> None:
    """``python -m hacnn search`` options."""
    p.add_argument("--weights", type=Path, required=True, help="hacnn or torchreid checkpoint")
    p.add_argument("--query", type=Path, nargs="+", required=True, metavar="IMG", help="query image(s)")
    p.add_argument("--gallery", type=Path, required=True, metavar="DIR|NPZ",
                   help="folder of gallery images, or the .npz that `python -m hacnn extract` wrote")
    p.add_argument("--out", type=Path, required=True, help=f"folder for {CSV_NAME} and one figure per query")
    p.add_argument("--topk", type=int, default=10, help="gallery items per query (default: 10)")
    p.add_argument("--metric", choices=("euclidean", "cosine"), default="euclidean",
                   help="squared euclidean (default, as in evaluation) or cosine distance")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking over the whole gallery")
    p.add_argument("--index", type=Path, default=None, metavar="PATH",
                   help="a hacnn.index.GalleryIndex saved over the --gallery .npz's features (ids = its "
                   "rows): it finds the top k, whose distances are then computed exactly (needs faiss)")
    p.add_argument("--shortlist", type=int, default=None, metavar="N",
                   help="with --index: take N >= --topk candidates from the index and keep the top k by "
                   "exact distance (repairs an approximate index's order, e.g. IVF-PQ; default: --topk)")
    p.add_argument("--gallery-root", type=Path, default=None,
                   help="image folder of an .npz gallery, if it moved (default: the one it recorded)")
    p.add_argument("--no-figures", action="store_true", help="only the CSV")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--force", action="store_true", help=f"overwrite {CSV_NAME} and the figures in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_search)


def run_search(args) -> int:
    r = search_gallery(args.weights, args.query, args.gallery, args.out, topk=args.topk, metric=args.metric,
                       rerank=args.rerank, gallery_root=args.gallery_root, figures=not args.no_figures,
                       force=args.force, batch_size=args.batch_size, device=args.device,
                       progress=not args.no_progress, index=args.index, shortlist=args.shortlist)
    print(f"wrote {r.csv_path} ({len(r.queries.paths)} queries x top {r.indices.shape[1]} of "
          f"{len(r.gallery.paths)}" + (f" through {args.index}" if args.index else "") +
          f") and {len(r.figures)} figures to {args.out}")
    return 0
