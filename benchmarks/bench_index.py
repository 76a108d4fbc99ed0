"""Gallery search at 100k and 1M gallery vectors: hacnn.index (FAISS) vs chunked exact torch GEMM.

Features: synthetic, clustered like re-id galleries and laid out as HA-CNN's
eval feature. ``n / 20`` "identities" of ~20 items each: an identity centre
in a random 64-d subspace of R^1024, plus per-item spread in that subspace
and isotropic noise (both of the centre's scale), then each 512-d half
L2-normalised (HA-CNN's ``normalize_features``). The exact 1st / 5th / 10th
neighbour shares the query's identity ~97 / 90 / 80 % of the time (20k
gallery), so recall is about meaningful neighbours, not random points. Queries: fresh items of random
gallery identities.

Measured per gallery size, in one run:
  torch exact     q @ G^T in gallery blocks of 65,536 rows, running top-k (the ground truth;
                  for these features inner product ranks as the package's default euclidean)
  faiss exact     GalleryIndex(mode="exact") (flat inner product on the normalised vectors)
  IVF-Flat        nlist = sqrt(n) cells (316 / 1,000), trained on 40 x nlist vectors, nprobe swept
  IVF-PQ          the same cells, 64-byte PQ codes per vector (a 4 KiB fp32 row: 64 x smaller);
                  also with its ``--shortlist`` candidates ranked by exact distance
                  (``hacnn.search.rank(index=, shortlist=)``, ``search --shortlist``; the fp32
                  vectors must then be at hand: in RAM here, their MiB added to the column)
  HNSW            M=32, efConstruction=64, efSearch swept; the build time is first measured at the
                  smaller size (or on a 20k pilot) and extrapolated as n log n: a build over
                  ``--hnsw-budget-s`` is skipped and reported, not run
Reported: build time (train + add), memory (the estimate of ``memory_bytes`` and the measured
peak-RSS growth of the build), queries/s (all queries in one batched search), ratio to torch
exact's queries/s, recall@1 (the exact nearest neighbour is first) and recall@10
(|top-10 ∩ exact top-10| / 10).

    python benchmarks/bench_index.py                         # 100k and 1M (~35-45 min on 2 quiet cores)
    python benchmarks/bench_index.py --sizes 10000 --queries 100   # quick check
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_mib, reset_peak_rss_mib, set_threads  # noqa: E402
from hacnn.index import GalleryIndex  # noqa: E402
from hacnn.search import rank  # noqa: E402

MIB = 2 ** 20
_BLOCK = 1 << 16    # rows generated / scored per block


def identity_centres(num_ids: int, dim: int = 1024, rank: int = 64, seed: int = 0):
    """(rank, dim) basis of the identity subspace and (num_ids, rank) identity centres."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, dim), dtype=np.float32) / np.float32(math.sqrt(rank))
    return basis, rng.standard_normal((num_ids, rank), dtype=np.float32)


def draw_items(labels: np.ndarray, basis: np.ndarray, centres: np.ndarray, seed: int) -> np.ndarray:
    """(n, dim) float32 items of the given identities: centre + spread in the subspace
    + isotropic noise (each of the centre's scale), then each half L2-normalised."""
    rng = np.random.default_rng(seed)
    rank, dim = basis.shape
    out = np.empty((len(labels), dim), dtype=np.float32)                     # (n, dim)
    noise = np.float32(math.sqrt(rank / dim))
    for s in range(0, len(labels), _BLOCK):                                  # no float64 temporaries
        lab = labels[s:s + _BLOCK]
        x = (centres[lab] + rng.standard_normal((len(lab), rank), dtype=np.float32)) @ basis
        x += noise * rng.standard_normal(x.shape, dtype=np.float32)
        for half in (x[:, :dim // 2], x[:, dim // 2:]):
            half /= np.linalg.norm(half, axis=1, keepdims=True)
        out[s:s + len(lab)] = x
    return out


def torch_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int):
    """Exact (Q, k) top inner products over gallery blocks (running merge); (scores, indices)."""
    best_s = queries.new_full((len(queries), k), -float("inf"))
    best_i = torch.zeros(len(queries), k, dtype=torch.long)
    for s in range(0, len(gallery), _BLOCK):
        scores = queries @ gallery[s:s + _BLOCK].T                           # (Q, B)
        top = scores.topk(min(k, scores.shape[1]), dim=1)
        cand_s, cand_i = torch.cat([best_s, top.values], 1), torch.cat([best_i, top.indices + s], 1)
        keep = cand_s.topk(k, dim=1).indices
        best_s, best_i = cand_s.gather(1, keep), cand_i.gather(1, keep)
    return best_s, best_i


def recalls(found: np.ndarray, truth: np.ndarray, k: int):
    r1 = float((found[:, 0] == truth[:, 0]).mean())
    rk = float(np.mean([len(np.intersect1d(f[:k], t[:k])) for f, t in zip(found, truth)]) / k)
    return r1, rk


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def build(gallery: np.ndarray, mode: str, train_rows: int, **params):
    """(index, build seconds, peak RSS growth MiB) for one index over the gallery."""
    gc.collect()
    before = reset_peak_rss_mib()
    start = time.perf_counter()
    index = GalleryIndex(gallery.shape[1], mode, **params)
    if mode == "ivf":
        sample = np.random.default_rng(0).choice(len(gallery), size=min(train_rows, len(gallery)), replace=False)
        index.train(gallery[np.sort(sample)])
    index.add(gallery)
    return index, time.perf_counter() - start, peak_rss_mib() - before


def run_size(n: int, args, hnsw_history: list) -> None:
    basis, centres = identity_centres(max(1, n // 20), args.dim, seed=args.seed)
    labels = np.random.default_rng(args.seed + 1).integers(len(centres), size=n)
    t_gen, gallery = timed(lambda: draw_items(labels, basis, centres, args.seed + 2))
    q_labels = np.random.default_rng(args.seed + 3).choice(labels, args.queries)
    queries = draw_items(q_labels, basis, centres, args.seed + 4)
    qt, gt = torch.from_numpy(queries), torch.from_numpy(gallery)
    print(f"\n== gallery {n:,} x {args.dim} ({gallery.nbytes / MIB:,.0f} MiB fp32, {n // 20:,} identities; "
          f"generated in {t_gen:.1f} s), {args.queries:,} queries, k={args.k}")
    print(f"   the exact (Q, G) distance matrix would be {args.queries * n * 4 / MIB:,.0f} MiB for these "
          f"queries; {3368 * n * 4 / MIB:,.0f} MiB for Market-1501's 3,368")
    torch_topk(qt[:8], gt[:_BLOCK], args.k)                                  # warm-up
    t_torch, (_, truth) = timed(lambda: torch_topk(qt, gt, args.k))
    truth, qps_torch = truth.numpy(), args.queries / t_torch
    rows = [("torch exact (matmul + top-k, 64k-row blocks)", 0.0, gallery.nbytes / MIB, float("nan"),
             qps_torch, 1.0, 1.0)]

    def measure(name, index, t_build, rss, **search):
        index.set_params(**search)
        index.search(queries[:8], args.k)                                    # warm-up
        t, (_, found) = timed(lambda: index.search(queries, args.k))
        rows.append((name, t_build, index.memory_bytes() / MIB, rss, args.queries / t,
                     *recalls(found.numpy(), truth, args.k)))

    modes = args.modes.split(",")
    if "exact" in modes:
        index, t_build, rss = build(gallery, "exact", 0)
        measure("faiss exact (flat inner product)", index, t_build, rss)
        del index
    nlist = args.nlist or max(1, int(round(math.sqrt(n))))
    for kind, pq_m in (("ivf", 0), ("ivfpq", args.pq_m)):
        if kind not in modes:
            continue
        index, t_build, rss = build(gallery, "ivf", 40 * nlist, nlist=nlist, pq_m=pq_m)
        label = f"IVF{nlist}," + (f"PQ{pq_m}" if pq_m else "Flat")
        for nprobe in args.nprobe:
            measure(f"{label} nprobe={nprobe}", index, t_build, rss, nprobe=nprobe)
        for nprobe in (args.nprobe if pq_m else []):
            for n_short in args.shortlist:
                index.set_params(nprobe=nprobe)
                rank(queries[:8], gallery, args.k, index=index, shortlist=n_short)      # warm-up
                t, (_, found) = timed(lambda: rank(queries, gallery, args.k, index=index, shortlist=n_short))
                rows.append((f"{label} nprobe={nprobe} + exact top-{args.k} of {n_short}", t_build,
                             (index.memory_bytes() + gallery.nbytes) / MIB, rss, args.queries / t,
                             *recalls(found, truth, args.k)))
        del index
    if "hnsw" in modes:
        hnsw = dict(M=args.hnsw_m, ef_construction=args.ef_construction)
        if not hnsw_history and n > 20000:                                  # pilot build to extrapolate from
            hnsw_history.append((20000, build(gallery[:20000], "hnsw", 0, **hnsw)[1]))
        m, t_m = hnsw_history[-1] if hnsw_history else (n, 0.0)
        estimate = t_m * (n / m) * math.log(n) / math.log(max(m, 2))
        if estimate > args.hnsw_budget_s:
            print(f"   HNSW{args.hnsw_m}: skipped, estimated build {estimate:,.0f} s (from {t_m:.1f} s at {m:,}) "
                  f"> --hnsw-budget-s {args.hnsw_budget_s:.0f}")
        else:
            if m < n:
                print(f"   HNSW{args.hnsw_m} build: estimated {estimate:,.0f} s (from {t_m:.1f} s at {m:,})")
            index, t_build, rss = build(gallery, "hnsw", 0, **hnsw)
            hnsw_history.append((n, t_build))
            for ef in args.ef_search:
                measure(f"HNSW{args.hnsw_m} efC={args.ef_construction} efSearch={ef}", index, t_build, rss,
                        ef_search=ef)
            del index
    print(f"   {'method':<46s} {'build s':>8s} {'index MiB':>10s} {'RSS+ MiB':>9s} {'queries/s':>10s} "
          f"{'x torch':>8s} {'R@1':>6s} {'R@' + str(args.k):>6s}")
    for name, t_build, mem, rss, qps, r1, rk in rows:
        print(f"   {name:<46s} {t_build:8.1f} {mem:10,.0f} {rss:9,.0f} {qps:10,.0f} {qps / qps_torch:8.2f} "
              f"{r1:6.3f} {rk:6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(float(v)) for v in s.split(",")]                   # noqa: E731 (1e6 allowed)
    parser.add_argument("--sizes", type=ints, default=[100_000, 1_000_000], help="gallery sizes, e.g. 1e5,1e6")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--modes", default="exact,ivf,ivfpq,hnsw")
    parser.add_argument("--nlist", type=int, default=0, help="IVF cells (0: sqrt of the gallery size)")
    parser.add_argument("--nprobe", type=ints, default=[8, 32])
    parser.add_argument("--pq-m", type=int, default=64, help="IVF-PQ bytes per vector")
    parser.add_argument("--shortlist", type=ints, default=[100],
                        help="IVF-PQ candidates ranked by exact distance (hacnn.search.rank shortlist)")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef-search", type=ints, default=[32, 128])
    parser.add_argument("--hnsw-budget-s", type=float, default=1500.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import faiss

    set_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} CPU cores, {args.threads} threads (torch and faiss), torch "
          f"{torch.__version__}, faiss {faiss.__version__}, load average {os.getloadavg()[0]:.2f}")
    history: list = []
    for n in sorted(args.sizes):
        run_size(n, args, history)
        gc.collect()


if __name__ == "__main__":
    main()
