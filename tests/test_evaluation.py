"""hacnn.evaluation: hand-worked examples, a brute-force reference, torchreid equivalence."""
import dataclasses
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hacnn import evaluation as ev
from hacnn.evaluation import (RankResult, compute_distance_matrix, evaluate, evaluate_features,
                              evaluate_model, evaluate_rank, extract_features, multi_query_pool)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchreid.reid.metrics.distance import compute_distance_matrix as tr_distance
    from torchreid.reid.metrics.rank import evaluate_rank as tr_evaluate_rank


# ----------------------------------------------------------------------------- hand-worked examples

# Gallery:       g0     g1     g2     g3     g4           g5         g6
G_PIDS = np.array([1,     1,     2,     2,     0,           -1,        3])
G_CAMS = np.array([0,     1,     1,     1,     2,           1,         1])
#                                             (distractor) (junk)
Q_PIDS = np.array([1, 2, 1])
Q_CAMS = np.array([0, 0, 2])
DISTMAT = np.array([
    # g0   g1   g2   g3   g4   g5   g6
    [0.1, 0.5, 0.2, 0.9, 0.3, 0.05, 0.7],  # q0 (pid 1, cam 0)
    [0.4, 0.3, 0.1, 0.6, 0.5, 0.2, 0.35],  # q1 (pid 2, cam 0)
    [0.3, 0.3, 0.3, 0.1, 0.2, 0.0, 0.4],   # q2 (pid 1, cam 2)
])
# q0: g0 is removed (same pid and camera), g5 is junk. Valid order:
#     g2 .2, g4 .3, g1 .5 (match), g6 .7, g3 .9 -> match ranks [3]
#     AP = 1/3, INP = 1/3, first match at rank 3.
# q1: only g5 (junk) is dropped. Order: g2 .1 (match), g1 .3, g6 .35, g0 .4,
#     g4 .5, g3 .6 (match) -> ranks [1, 6]; AP = (1/1 + 2/6) / 2 = 2/3,
#     INP = 2/6 = 1/3, first at rank 1.
# q2: g3 .1, g4 .2, then a tie at .3 of g2 (non-match), g0 and g1 (matches):
#     pessimistic ties put g2 first -> ranks [4, 5]; g6 .4 last.
#     AP = (1/4 + 2/5) / 2 = 0.325, INP = 2/5, first at rank 4.
# CMC (7 gallery items -> length 7): first ranks {3, 1, 4}
#     Rank-1 = 1/3, Rank-2 = 1/3, Rank-3 = 2/3, Rank-4..7 = 1.
# mAP = (1/3 + 2/3 + 0.325) / 3 = 0.441666..., mINP = (1/3 + 1/3 + 2/5) / 3.
HAND_CMC = [1 / 3, 1 / 3, 2 / 3, 1, 1, 1, 1]
HAND_MAP = (1 / 3 + 2 / 3 + 0.325) / 3
HAND_MINP = (1 / 3 + 1 / 3 + 2 / 5) / 3


@pytest.mark.parametrize("dense", [False, True])
def test_hand_worked_three_queries(dense):
    with mock.patch.object(ev, "_DENSE_FRACTION", -1.0 if dense else 2.0):
        res = evaluate(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    np.testing.assert_allclose(res.cmc, HAND_CMC, atol=1e-12)
    assert res.mAP == pytest.approx(HAND_MAP, abs=1e-12)
    assert res.mINP == pytest.approx(HAND_MINP, abs=1e-12)
    assert (res.num_valid_queries, res.num_skipped_queries) == (3, 0)
    cmc, mAP = evaluate_rank(torch.tensor(DISTMAT), Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5)
    np.testing.assert_allclose(cmc, HAND_CMC[:5], atol=1e-12)
    assert mAP == pytest.approx(HAND_MAP, abs=1e-12)


def test_query_without_valid_match_is_skipped_and_counted():
    # q3 (pid 3, cam 1): its only gallery image g6 is in the same camera.
    distmat = np.vstack([DISTMAT, np.linspace(0, 1, 7)])
    res = evaluate(distmat, np.append(Q_PIDS, 3), G_PIDS, np.append(Q_CAMS, 1), G_CAMS)
    assert (res.num_valid_queries, res.num_skipped_queries) == (3, 1)
    np.testing.assert_allclose(res.cmc, HAND_CMC, atol=1e-12)
    assert res.mAP == pytest.approx(HAND_MAP, abs=1e-12)


def test_ties_rank_true_match_after_non_matches():
    # One true match at distance 1.0, tied with two non-matches; one non-match at 0.5.
    # Pessimistic rule: both tied non-matches come first -> the match is at rank 4.
    distmat = np.array([[1.0, 1.0, 0.5, 1.0, 2.0]])
    g_pids, g_cams = np.array([7, 2, 3, 4, 5]), np.array([1, 1, 1, 1, 1])
    res = evaluate(distmat, [7], g_pids, [0], g_cams, max_rank=5)
    np.testing.assert_array_equal(res.cmc, [0, 0, 0, 1, 1])
    assert res.mAP == 0.25 and res.mINP == 0.25


@pytest.mark.parametrize("protocol", ["market", "cuhk03_classic"])
def test_all_junk_gallery_gives_nan_and_counts_every_query(protocol):
    ids = ([1, 2], [-1, -1, -1], [0, 0], [1, 1, 1])
    for res in (evaluate(np.ones((2, 3)), *ids, protocol=protocol),
                evaluate_features(np.ones((2, 4)), np.ones((3, 4)), *ids, protocol=protocol)):
        assert (res.num_valid_queries, res.num_skipped_queries) == (0, 2)
        assert np.isnan(res.mAP) and np.isnan(res.cmc).all() and len(res.cmc) == 3


def test_rank_result_row_and_frozen():
    res = evaluate(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
    row = res.row()
    assert list(row) == ["rank1", "rank5", "rank10", "rank20", "mAP", "mINP",
                         "num_valid_queries", "num_skipped_queries"]
    assert row["rank1"] == pytest.approx(1 / 3) and row["rank5"] == 1.0
    assert np.isnan(row["rank10"])  # only 7 gallery items: no Rank-10
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.mAP = 1.0


# ----------------------------------------------------------------------------- brute-force reference

def reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Per query, sort the valid gallery by (distance, is_match): ties put non-matches first."""
    max_rank = min(max_rank, distmat.shape[1])
    cmcs, aps, inps = [], [], []
    for i in range(len(q_pids)):
        items = sorted((distmat[i, j], bool(g_pids[j] == q_pids[i])) for j in range(len(g_pids))
                       if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i]))
        hits = [r + 1 for r, (_, is_match) in enumerate(items) if is_match]
        if hits:
            cmcs.append([float(hits[0] <= k) for k in range(1, max_rank + 1)])
            aps.append(sum((n + 1) / r for n, r in enumerate(hits)) / len(hits))
            inps.append(len(hits) / hits[-1])
    if not cmcs:
        return np.full(max_rank, np.nan), np.nan, np.nan, 0
    return np.mean(cmcs, 0), np.mean(aps), np.mean(inps), len(cmcs)


@st.composite
def problems(draw):
    """Small problems with many ties (integer distances), junk, distractors, missing ids."""
    q, g = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    ints = lambda n, lo, hi: np.array(draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)))
    distmat = ints(q * g, 0, 4).reshape(q, g).astype(np.float64)
    return distmat, ints(q, 1, 4), ints(g, -1, 4), ints(q, 0, 2), ints(g, 0, 2)


@settings(max_examples=300, deadline=None)
@given(problems(), st.sampled_from([-1.0, 2.0]), st.integers(1, 15))
def test_matches_brute_force_reference(problem, dense_fraction, max_rank):
    distmat, q_pids, g_pids, q_cams, g_cams = problem
    with mock.patch.object(ev, "_DENSE_FRACTION", dense_fraction):
        res = evaluate(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
    cmc, mAP, mINP, n_valid = reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank)
    assert (res.num_valid_queries, res.num_skipped_queries) == (n_valid, len(q_pids) - n_valid)
    np.testing.assert_allclose(res.cmc, cmc, rtol=0, atol=1e-9)
    np.testing.assert_allclose([res.mAP, res.mINP], [mAP, mINP], rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_matches_torchreid_python_path(seed):
    rng = np.random.default_rng(seed)
    num_q, num_g = 40, 250
    distmat = rng.random((num_q, num_g))  # continuous: no ties, so argsort order is irrelevant
    q_pids, q_cams = rng.integers(1, 30, num_q), rng.integers(0, 4, num_q)
    g_pids, g_cams = rng.integers(-1, 30, num_g), rng.integers(0, 4, num_g)
    keep = g_pids != -1  # torchreid's datasets drop junk before evaluation
    expected = tr_evaluate_rank(distmat[:, keep], q_pids, g_pids[keep], q_cams, g_cams[keep],
                                max_rank=50, use_cython=False)
    cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=50)
    np.testing.assert_allclose(cmc, expected[0], atol=1e-6)  # torchreid's CMC is float32
    assert mAP == pytest.approx(expected[1], abs=1e-9)


@pytest.mark.parametrize("protocol", ["market", "cuhk03_classic"])
def test_features_path_equals_distance_matrix_path(protocol):
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(50, 16)), rng.normal(size=(300, 16))
    q_pids, g_pids = rng.integers(0, 20, 50), rng.integers(-1, 20, 300)
    q_cams, g_cams = rng.integers(0, 3, 50), rng.integers(0, 3, 300)
    ids = (q_pids, g_pids, q_cams, g_cams)
    for metric in ev.METRICS:
        with mock.patch.object(ev, "_CHUNK_ELEMENTS", 700):  # 2-3 rows a chunk, 8 chunks a block
            a = evaluate_features(qf, gf, *ids, metric=metric, protocol=protocol)
            b = evaluate(compute_distance_matrix(qf, gf, metric), *ids, protocol=protocol)
        c = evaluate_features(qf, gf, *ids, metric=metric, protocol=protocol)  # one chunk
        np.testing.assert_allclose(a.cmc, b.cmc, atol=1e-12)
        assert (a.mAP, a.mINP) == pytest.approx((b.mAP, b.mINP), abs=1e-12)
        if protocol == "market":  # (the random draws follow the chunk grid)
            np.testing.assert_allclose(a.cmc, c.cmc, atol=1e-12)
            assert a.mAP == pytest.approx(c.mAP, abs=1e-12)


# ----------------------------------------------------------------------------- CUHK03 classic

def test_single_shot_equals_market_when_one_item_per_identity():
    # Each query sees exactly one valid item per gallery identity: no randomness left,
    # and with one true match AP = 1 / rank, i.e. the Market protocol's numbers.
    rng = np.random.default_rng(1)
    g_pids, g_cams = np.arange(1, 31), np.ones(30, dtype=int)
    q_pids, q_cams = rng.integers(1, 31, 25), np.zeros(25, dtype=int)
    distmat = rng.random((25, 30))
    single = evaluate(distmat, q_pids, g_pids, q_cams, g_cams, protocol="cuhk03_classic")
    market = evaluate(distmat, q_pids, g_pids, q_cams, g_cams, protocol="market")
    np.testing.assert_allclose(single.cmc, market.cmc, atol=1e-12)
    assert single.mAP == pytest.approx(market.mAP, abs=1e-12)


def test_single_shot_with_all_distances_tied_ranks_the_match_last():
    # Every draw keeps one item per identity; with all distances equal the pessimistic
    # rule puts the match after the other sampled identities: rank = #identities.
    g_pids = np.array([1, 1, 2, 3, 3, 3, 4, -1])
    g_cams = np.array([1, 1, 1, 1, 0, 1, 1, 1])
    res = evaluate(np.ones((2, 8)), [3, 4], g_pids, [0, 2], g_cams, protocol="cuhk03_classic", max_rank=6)
    # q0 (pid 3, cam 0): its cam-0 item is removed -> identities {1, 2, 3, 4}: rank 4.
    # q1 (pid 4, cam 2): identities {1, 2, 3, 4}: rank 4.
    np.testing.assert_array_equal(res.cmc, [0, 0, 0, 1, 1, 1])
    assert res.mAP == 0.25 and res.num_valid_queries == 2


def test_single_shot_is_seeded_and_agrees_with_torchreid_in_expectation():
    rng = np.random.default_rng(2)
    distmat = rng.random((30, 120))
    q_pids, g_pids = rng.integers(1, 15, 30), rng.integers(1, 15, 120)
    q_cams, g_cams = rng.integers(0, 2, 30), rng.integers(0, 2, 120)
    args = (distmat, q_pids, g_pids, q_cams, g_cams)
    a = evaluate(*args, protocol="cuhk03_classic", max_rank=14, seed=3)
    b = evaluate(*args, protocol="cuhk03_classic", max_rank=14, seed=3)
    np.testing.assert_array_equal(a.cmc, b.cmc)
    ours = evaluate(*args, protocol="cuhk03_classic", max_rank=14, num_repeats=400).cmc
    np.random.seed(0)
    theirs = np.mean([tr_evaluate_rank(*args, max_rank=14, use_metric_cuhk03=True,
                                       use_cython=False)[0] for _ in range(40)], 0)
    np.testing.assert_allclose(ours, theirs, atol=0.03)  # both ~ the same expectation
    assert ours[-1] == 1.0  # 14 identities: the match is always within rank 14


# ----------------------------------------------------------------------------- distances

@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_distance_matrix_matches_torchreid_and_is_chunked(metric):
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(37, 8)).astype(np.float32), rng.normal(size=(53, 8)).astype(np.float32)
    expected = tr_distance(torch.from_numpy(qf), torch.from_numpy(gf), metric)
    with mock.patch.object(ev, "_CHUNK_ELEMENTS", 100):  # 1 row per chunk
        chunked = compute_distance_matrix(qf, gf, metric)
    torch.testing.assert_close(chunked, expected.clamp(min=0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compute_distance_matrix(torch.from_numpy(qf), gf, metric), chunked)
    if metric == "euclidean":
        brute = ((qf[:, None] - gf[None]) ** 2).sum(-1)
        np.testing.assert_allclose(chunked.numpy(), brute, atol=1e-4)


# ----------------------------------------------------------------------------- multi-query

def test_multi_query_pool_mean_and_max():
    f = torch.tensor([[1.0, 4.0], [3.0, 0.0], [5.0, 5.0], [-1.0, 2.0]])
    pids, cams = np.array([2, 1, 2, 1]), np.array([0, 1, 0, 1])
    pooled, p, c = multi_query_pool(f, pids, cams, method="mean")
    np.testing.assert_array_equal(p, [1, 2]), np.testing.assert_array_equal(c, [1, 0])
    torch.testing.assert_close(pooled, torch.tensor([[1.0, 1.0], [3.0, 4.5]]))
    pooled, _, _ = multi_query_pool(f.numpy(), pids, cams, method="max")
    torch.testing.assert_close(pooled, torch.tensor([[3.0, 2.0], [5.0, 5.0]]))


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, message", [
    (lambda: evaluate(DISTMAT, Q_PIDS[:2], G_PIDS, Q_CAMS, G_CAMS), "q_pids: expected a 1-D array of length 3"),
    (lambda: evaluate(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS[:5]), "g_camids: expected a 1-D array of length 7"),
    (lambda: evaluate(DISTMAT[0], Q_PIDS, G_PIDS, Q_CAMS, G_CAMS), "distmat: expected a non-empty 2-D"),
    (lambda: evaluate(np.zeros((0, 7)), [], G_PIDS, [], G_CAMS), "distmat: expected a non-empty 2-D"),
    (lambda: evaluate(np.where(DISTMAT > 0.8, np.nan, DISTMAT), Q_PIDS, G_PIDS, Q_CAMS, G_CAMS),
     "finite values, received 1 NaN/inf"),
    (lambda: evaluate(DISTMAT, Q_PIDS * 1.0, G_PIDS, Q_CAMS, G_CAMS), "q_pids: expected integer ids"),
    (lambda: evaluate(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, protocol="viper"), "protocol: expected one of"),
    (lambda: evaluate(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=0), "max_rank: expected a positive int"),
    (lambda: compute_distance_matrix(np.ones((2, 3)), np.ones((4, 5))), "gf: expected feature dim 3"),
    (lambda: compute_distance_matrix(np.ones(3), np.ones((4, 3))), "qf: expected a non-empty 2-D"),
    (lambda: compute_distance_matrix(np.ones((0, 3)), np.ones((4, 3))), "qf: expected a non-empty 2-D"),
    (lambda: compute_distance_matrix(np.ones((2, 3)), np.full((4, 3), np.inf)), "gf: expected finite values"),
    (lambda: compute_distance_matrix(np.ones((2, 3)), np.ones((4, 3)), "l1"), "metric: expected one of"),
    (lambda: evaluate_features(np.ones((2, 3)), np.ones((4, 3)), [1], [1] * 4, [0, 0], [1] * 4),
     "q_pids: expected a 1-D array of length 2"),
    (lambda: multi_query_pool(np.ones((2, 3)), [1, 1], [0, 0], method="median"), "method: expected one of"),
])
def test_bad_input_raises_one_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call()


# ----------------------------------------------------------------------------- model evaluation

class MeanModel(nn.Module):
    """A deterministic 'network': per-channel means and a left-minus-right contrast."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):  # (B, 3, H, W) -> (B, 4)
        half = x.shape[-1] // 2
        contrast = x[..., :half].mean((1, 2, 3)) - x[..., half:].mean((1, 2, 3))
        return self.scale * torch.cat([x.mean((2, 3)), contrast[:, None]], 1)


def make_loader(pids, cams, batch_size=3, seed=0):
    """Batches of (images, pids, camids, paths); images of one identity share a colour."""
    g = torch.Generator().manual_seed(seed)
    pids, cams = torch.tensor(pids), torch.tensor(cams)
    colour = torch.stack([pids * 0.1, pids % 3 * 0.2, cams * 0.01], 1)     # (N, 3)
    images = colour[:, :, None, None] + 0.01 * torch.rand(len(pids), 3, 160, 64, generator=g)
    images[..., :32] += 0.05 * (cams % 2)[:, None, None, None]           # a camera-dependent contrast
    return [(images[i:i + batch_size], pids[i:i + batch_size], cams[i:i + batch_size],
             [f"{int(p):04d}_c{int(c)}.jpg" for p, c in zip(pids[i:i + batch_size], cams[i:i + batch_size])])
            for i in range(0, len(pids), batch_size)]


QUERY = make_loader([1, 2, 3, 4, 1], [0, 0, 0, 0, 1], seed=1)
GALLERY = make_loader([1, 2, 3, 4, 1, 2, 3, 4, 0, -1], [1, 1, 1, 1, 2, 2, 2, 2, 0, 1], seed=2)


def test_extract_features_shapes_flip_normalize_and_mode():
    model = MeanModel().train()
    f, pids, cams = extract_features(model, QUERY, progress=False)
    assert f.shape == (5, 4) and f.dtype == torch.float32 and not f.requires_grad
    np.testing.assert_array_equal(pids, [1, 2, 3, 4, 1]), np.testing.assert_array_equal(cams, [0, 0, 0, 0, 1])
    assert model.training  # mode restored
    images = torch.cat([b[0] for b in QUERY])
    torch.testing.assert_close(f, MeanModel()(images).detach())
    flipped, _, _ = extract_features(model, QUERY, flip=True, progress=False)
    torch.testing.assert_close(flipped[:, :3], f[:, :3])
    torch.testing.assert_close(flipped[:, 3], torch.zeros(5), atol=1e-6, rtol=0)  # contrast cancels
    unit, _, _ = extract_features(model, QUERY, flip=True, normalize=True, progress=False)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(unit, torch.nn.functional.normalize(flipped, dim=1))


def test_extract_features_optimizes_hacnn_without_touching_it():
    """HA-CNN features go through optimize_for_inference (a copy): same features as the eager model."""
    from conftest import randomize_bn

    from hacnn import HACNN

    torch.manual_seed(0)
    model = randomize_bn(HACNN(5)).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fast, _, _ = extract_features(model, QUERY, progress=False, flip=True)
    eager, _, _ = extract_features(model, QUERY, progress=False, flip=True, optimize=False)
    torch.testing.assert_close(fast, eager, atol=1e-5, rtol=0)
    with torch.no_grad():
        images = torch.cat([b[0] for b in QUERY])
        reference = (model.eval()(images) + model(images.flip(-1))) / 2
    torch.testing.assert_close(eager, reference)
    assert model.train().training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.is_contiguous() for p in model.parameters())          # the model keeps its layout


@pytest.mark.parametrize("options", [
    {}, {"metric": "cosine"}, {"flip": True}, {"rerank": True, "k1": 3, "k2": 2},
    {"multi_query": "mean"}, {"multi_query": "max"}, {"protocol": "cuhk03_classic"},
])
def test_evaluate_model_equals_manual_pipeline(options):
    model = MeanModel()
    res = evaluate_model(model, QUERY, GALLERY, progress=False, **options)
    assert isinstance(res, RankResult)
    qf, qp, qc = extract_features(model, QUERY, flip=options.get("flip", False), progress=False)
    gf, gp, gc = extract_features(model, GALLERY, flip=options.get("flip", False), progress=False)
    if "multi_query" in options:
        qf, qp, qc = multi_query_pool(qf, qp, qc, method=options["multi_query"])
        assert res.num_valid_queries + res.num_skipped_queries == 5  # (pid, cam) groups
    distmat = compute_distance_matrix(qf, gf, options.get("metric", "euclidean"))
    if options.get("rerank"):
        from hacnn.reranking import re_ranking
        distmat = re_ranking(distmat, compute_distance_matrix(qf, qf), compute_distance_matrix(gf, gf), 3, 2)
    expected = evaluate(distmat, qp, gp, qc, gc, protocol=options.get("protocol", "market"))
    np.testing.assert_allclose(res.cmc, expected.cmc, atol=1e-12)
    assert res.mAP == pytest.approx(expected.mAP, abs=1e-12)
    if not options:  # identities are well separated by colour: perfect retrieval
        assert res.rank(1) == 1.0 and res.mAP == 1.0 and res.num_skipped_queries == 0
