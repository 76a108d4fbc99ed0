"""hacnn.reranking: k-reciprocal re-ranking (Zhong et al., CVPR 2017) against torchreid's."""
import warnings
from unittest import mock

import numpy as np
import pytest
import torch

from hacnn import reranking
from hacnn.evaluation import compute_distance_matrix, evaluate
from hacnn.reranking import re_ranking

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchreid.reid.utils.rerank import re_ranking as tr_re_ranking


def clustered_features(seed, num_q=25, num_g=90, num_ids=12, dim=8, noise=0.6):
    """Features around identity centres (continuous: no distance ties)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g)
    qf = centres[q_pids] + noise * rng.normal(size=(num_q, dim))
    gf = centres[g_pids] + noise * rng.normal(size=(num_g, dim))
    return qf.astype(np.float32), gf.astype(np.float32), q_pids, g_pids


def distances(qf, gf):
    return [compute_distance_matrix(a, b).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf))]


@pytest.mark.parametrize("seed, k1, k2, lam", [
    (0, 20, 6, 0.3),   # the standard parameters
    (1, 20, 6, 0.3),
    (2, 7, 3, 0.5),    # odd k1: k1 / 2 rounds half to even, as numpy's around
    (3, 9, 1, 0.1),    # k2 = 1: no local query expansion
    (4, 4, 4, 0.0),
])
def test_matches_torchreid(seed, k1, k2, lam):
    qg, qq, gg = distances(*clustered_features(seed)[:2])
    expected = tr_re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    ours = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    assert isinstance(ours, np.ndarray) and ours.shape == qg.shape
    np.testing.assert_allclose(ours, expected, atol=2e-6, rtol=0)


def test_torch_in_torch_out_and_chunking_does_not_change_result():
    qg, qq, gg = (torch.from_numpy(d) for d in distances(*clustered_features(5)[:2]))
    whole = re_ranking(qg, qq, gg)
    with mock.patch.object(reranking, "_CHUNK_ELEMENTS", 500):  # a few rows / pairs per chunk
        chunked = re_ranking(qg, qq, gg)
    assert isinstance(whole, torch.Tensor)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)


def test_lambda_one_is_the_normalised_original_distance():
    qg, qq, gg = distances(*clustered_features(6)[:2])
    full = np.block([[qq, qg], [qg.T, gg]]) ** 2
    expected = qg ** 2 / full.max(1)[: len(qg), None]
    np.testing.assert_allclose(re_ranking(qg, qq, gg, lambda_value=1.0), expected, rtol=1e-6)


def test_values_lie_in_unit_interval_and_reranking_helps_clustered_data():
    qf, gf, q_pids, g_pids = clustered_features(7, num_q=40, num_g=200, noise=0.9)
    qg, qq, gg = distances(qf, gf)
    final = re_ranking(qg, qq, gg)
    assert final.min() >= 0 and final.max() <= 1 + 1e-6
    cams = lambda n: np.zeros(n, dtype=int)
    before = evaluate(qg, q_pids, g_pids, cams(40) + 1, cams(200))
    after = evaluate(final, q_pids, g_pids, cams(40) + 1, cams(200))
    assert after.mAP > before.mAP  # the paper's claim, on well-clustered features


@pytest.mark.parametrize("args, message", [
    ((np.ones((2, 3)), np.ones((2, 2)), np.ones((4, 4))), r"g_g_dist: expected shape \(3, 3\)"),
    ((np.ones((2, 3)), np.ones((3, 3)), np.ones((3, 3))), r"q_q_dist: expected shape \(2, 2\)"),
    ((np.ones(3), np.ones((1, 1)), np.ones((3, 3))), "q_g_dist: expected a 2-D"),
    ((np.full((2, 3), np.nan), np.ones((2, 2)), np.ones((3, 3))), "q_g_dist: expected finite"),
    ((np.ones((0, 3)), np.ones((0, 0)), np.ones((3, 3))), "expected Q, G >= 1"),
])
def test_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        re_ranking(*args)
