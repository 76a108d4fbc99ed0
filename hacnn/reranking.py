"""k-reciprocal re-ranking (Zhong, Zheng, Cao & Li, "Re-ranking Person
Re-identification with k-reciprocal Encoding", CVPR 2017, Sec. 3).

All N = Q + G probe and gallery items are ranked together:

- ``N(p, k)``: the k + 1 nearest items of p (p itself first);
- ``R(p, k)``: k-reciprocal neighbours, the g in N(p, k) with p in N(g, k);
- ``R*(p, k)``: R(p, k1) grown by R(q, k1/2) of each q in R(p, k1) whose
  half-size set shares more than 2/3 of its members with R(p, k1);
- ``V_p``: a sparse vector over the N items, exp(-d(p, g)) on R*(p, k1),
  normalised to sum 1; local query expansion replaces V_p by the mean of
  V_g over the k2 nearest g;
- Jaccard distance ``d_J(p, g) = 1 - sum_j min(V_pj, V_gj) / sum_j max(V_pj, V_gj)``
  (= 1 - m / (2 - m) for min-sum m, since both vectors sum to 1);
- final distance ``(1 - lambda) d_J + lambda d``.

Conventions of the authors' released code, kept so that the standard
k1 = 20, k2 = 6, lambda = 0.3 mean the same here (and results match
torchreid's ``re_ranking``): the input distances are squared, then each row
is divided by its maximum. The input matrices are assumed symmetric where
they should be (``q_q``, ``g_g``). Everything is vectorised; V is kept
sparse, and neither the N x N distance nor a dense N x N V is ever built.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["re_ranking"]

_CHUNK_ELEMENTS = 1 << 22


def _as_dist(x, name: str, shape: tuple[int, int]) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, received {tuple(t.shape)}")
    t = t.detach().cpu().float()
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: expected finite distances, received NaN/inf entries")
    return t


class _Distances:
    """The squared, row-normalised N x N distance, read block-wise, never stored.

    One pass over row chunks finds each row's maximum and its k nearest items.
    """

    def __init__(self, qg: torch.Tensor, qq: torch.Tensor, gg: torch.Tensor, k: int):
        self.qg, self.qq, self.gg, self.gq = qg, qq, gg, qg.t().contiguous()
        self.Q, self.N = qq.shape[0], qq.shape[0] + gg.shape[0]
        self.row_max = torch.ones(self.N)
        self.nn = torch.empty(self.N, k, dtype=torch.long)           # (N, k) nearest, self first
        for rows in self.chunks(self.N):
            d = self.raw_rows(rows)                                   # (B, N)
            top = d.amax(1)
            self.row_max[rows] = top.masked_fill_(top == 0, 1.0)
            d /= self.row_max[rows, None]
            self.nn[rows] = d.topk(k, largest=False, sorted=True).indices

    def chunks(self, n: int):
        step = max(1, _CHUNK_ELEMENTS // self.N)
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def raw_rows(self, rows: slice) -> torch.Tensor:
        """(B, N) squared distances of items ``rows`` to all items."""
        q_rows = slice(min(rows.start, self.Q), min(rows.stop, self.Q))
        g_rows = slice(max(rows.start - self.Q, 0), max(rows.stop - self.Q, 0))
        top = torch.cat([self.qq[q_rows], self.qg[q_rows]], 1)        # query items
        bottom = torch.cat([self.gq[g_rows], self.gg[g_rows]], 1)    # gallery items
        return torch.cat([top, bottom]).pow_(2)

    def pairs(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Normalised distance d(i, j) for index tensors of one shape."""
        Q = self.Q
        iq, jq = i < Q, j < Q
        ic, jc = torch.where(iq, i, i - Q), torch.where(jq, j, j - Q)
        d = torch.where(iq & jq, self.qq[ic.clamp(max=Q - 1), jc.clamp(max=Q - 1)], 0.0)
        d = torch.where(iq & ~jq, self.qg[ic.clamp(max=Q - 1), jc.clamp(min=0)], d)
        d = torch.where(~iq & jq, self.gq[ic.clamp(min=0), jc.clamp(max=Q - 1)], d)
        d = torch.where(~iq & ~jq, self.gg[ic.clamp(min=0), jc.clamp(min=0)], d)
        return d.pow(2) / self.row_max[i]


def _reciprocal(nn: torch.Tensor) -> torch.Tensor:
    """(N, K) nearest-neighbour lists -> (N, K) mask: is item i in the list of nn[i, t]?"""
    me = torch.arange(len(nn))
    mask = torch.empty_like(nn, dtype=torch.bool)
    step = max(1, _CHUNK_ELEMENTS // nn.shape[1] ** 2)
    for s in range(0, len(nn), step):
        rows = slice(s, s + step)
        mask[rows] = (nn[nn[rows]] == me[rows, None, None]).any(2)   # (B, K, K) -> (B, K)
    return mask


def _expanded_sets(nn: torch.Tensor, k1: int):
    """R*(i, k1) for every item: (rows, cols) of the sparse membership, deduplicated."""
    N = len(nn)
    R, half = nn[:, : k1 + 1], nn[:, : min(round(k1 / 2) + 1, nn.shape[1])]
    in_R, in_half = _reciprocal(R), _reciprocal(half)                # (N, K1), (N, Kh)
    rows, cols = [], []
    step = max(1, _CHUNK_ELEMENTS // (R.shape[1] ** 2 * half.shape[1]))
    for s in range(0, N, step):
        b = slice(s, s + step)
        cand_sets = half[R[b]]                                        # (B, K1, Kh) R(c, k1/2)
        cand_mask = in_half[R[b]]                                     # (B, K1, Kh)
        shared = (cand_sets[..., None] == R[b][:, None, None, :]) & in_R[b][:, None, None, :]
        overlap = (shared.any(3) & cand_mask).sum(2)                  # (B, K1)
        accept = in_R[b] & (3 * overlap > 2 * cand_mask.sum(2))      # more than 2/3 shared
        members = torch.cat([R[b].masked_fill(~in_R[b], N),
                             cand_sets.masked_fill(~(cand_mask & accept[..., None]), N).flatten(1)], 1)
        members = members.sort(1).values                              # (B, K1 + K1 * Kh)
        keep = members < N
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]              # drop duplicates
        r, t = keep.nonzero(as_tuple=True)
        rows.append(r + s), cols.append(members[r, t])
    return torch.cat(rows), torch.cat(cols)


def _sparse(rows, cols, vals, n: int) -> torch.Tensor:
    """Coalesced (n, n) COO matrix (duplicates summed)."""
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n),
                                   check_invariants=False).coalesce()


def _expand_query(V: torch.Tensor, nn: torch.Tensor) -> torch.Tensor:
    """Row i of the result = mean of the rows nn[i, :] of sparse V (rows sorted)."""
    N, k = nn.shape
    (r, c), v = V.indices(), V.values()
    count = torch.bincount(r, minlength=N)
    start = torch.cumsum(count, 0) - count
    src = nn.flatten()                                                # (N k,) rows to average
    n = count[src]
    pair = torch.repeat_interleave(torch.arange(len(src)), n)         # (P,) which (i, t) pair
    entry = start[src][pair] + torch.arange(len(pair)) - (torch.cumsum(n, 0) - n)[pair]
    return _sparse(pair // k, c[entry], v[entry] / k, N)


def _jaccard_min_sum(V: torch.Tensor, Q: int) -> torch.Tensor:
    """(Q, G) sums over j of min(V[p, j], V[Q + g, j]) for sparse coalesced (N, N) V."""
    N = V.shape[0]
    (r, c), v = V.indices(), V.values()
    q_e = (r < Q).nonzero()[:, 0]                                     # query entries
    g_e = (r >= Q).nonzero()[:, 0]
    g_e = g_e[torch.argsort(c[g_e], stable=True)]                     # gallery entries by column
    g_count = torch.bincount(c[g_e], minlength=N)
    g_start = torch.cumsum(g_count, 0) - g_count
    per_entry = g_count[c[q_e]]                                       # pairs each query entry makes
    S = torch.zeros(Q * (N - Q))
    ends = torch.cumsum(per_entry, 0)
    bounds = torch.searchsorted(ends, torch.arange(0, int(ends[-1]) if len(ends) else 0,
                                                   _CHUNK_ELEMENTS), right=True).tolist()
    for lo, hi in zip(bounds, bounds[1:] + [len(q_e)]):
        e, n = q_e[lo:hi], per_entry[lo:hi]
        pair_e = torch.repeat_interleave(torch.arange(len(e)), n)     # (P,) query entry of each pair
        offset = torch.arange(len(pair_e)) - (torch.cumsum(n, 0) - n)[pair_e]
        partner = g_e[g_start[c[e]][pair_e] + offset]                 # (P,) gallery entry
        vals = torch.minimum(v[e][pair_e], v[partner])
        S.index_add_(0, r[e][pair_e] * (N - Q) + r[partner] - Q, vals)
    return S.view(Q, N - Q)


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6, lambda_value: float = 0.3):
    """Re-ranked (Q, G) distances (torchreid's signature; numpy in -> numpy out, torch -> torch).

    q_g_dist: (Q, G), q_q_dist: (Q, Q), g_g_dist: (G, G) distances.
    """
    shape = tuple(np.shape(q_g_dist))
    if len(shape) != 2:
        raise ValueError(f"q_g_dist: expected a 2-D (Q, G) matrix, received shape {shape}")
    Q, G = shape
    qg = _as_dist(q_g_dist, "q_g_dist", (Q, G))
    qq, gg = _as_dist(q_q_dist, "q_q_dist", (Q, Q)), _as_dist(g_g_dist, "g_g_dist", (G, G))
    if Q == 0 or G == 0 or k1 < 1 or k2 < 1 or not 0 <= lambda_value <= 1:
        raise ValueError(f"re_ranking: expected Q, G >= 1, k1, k2 >= 1, 0 <= lambda <= 1; "
                         f"received Q={Q}, G={G}, k1={k1}, k2={k2}, lambda={lambda_value}")
    N = Q + G
    dist = _Distances(qg, qq, gg, k=min(max(k1 + 1, k2), N))
    nn = dist.nn
    # V: exp(-d) on R*(i, k1), each row normalised to sum 1
    rows, cols = _expanded_sets(nn, min(k1, N - 1))
    w = torch.exp(-dist.pairs(rows, cols))
    w = w / torch.zeros(N).index_add_(0, rows, w)[rows]
    V = _sparse(rows, cols, w, N)
    if k2 != 1:  # local query expansion: V_i <- mean of V_j over the k2 nearest j of i
        V = _expand_query(V, nn[:, : min(k2, N)])
    m = _jaccard_min_sum(V, Q)                                        # (Q, G)
    jaccard = 1 - m / (2 - m)
    original = qg.pow(2) / dist.row_max[:Q, None]
    final = jaccard * (1 - lambda_value) + original * lambda_value
    return final.numpy() if isinstance(q_g_dist, np.ndarray) else final
