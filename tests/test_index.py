"""hacnn.index: FAISS gallery index vs brute force and the package's exact evaluation."""
import os
import re
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F

faiss = pytest.importorskip("faiss")

from hacnn.evaluation import compute_distance_matrix, evaluate, evaluate_features  # noqa: E402
from hacnn.index import GalleryIndex, estimate_memory, evaluate_with_index  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    """FAISS's OpenMP threads spin badly on shared cores (and next to pytest-xdist workers)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def clustered(n, dim, centres, seed=0, spread=0.4):
    """(n, dim) float32 points around ``centres`` Gaussian centres, and their centre labels."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    label = rng.integers(centres, size=n)
    return (c[label] + spread * rng.normal(size=(n, dim))).astype(np.float32), label


def reid_problem(num_g=240, num_q=60, dim=64, seed=0, halves=False, noise=2.5):
    """Features with identity structure, pids over 4 cameras, a few junk items; optionally
    HA-CNN's eval layout (two L2-normalised halves)."""
    rng = np.random.default_rng(seed)
    ids = 30
    centre = rng.normal(size=(ids + 1, dim))
    g_pids, q_pids = rng.integers(0, ids + 1, num_g), rng.integers(1, ids + 1, num_q)
    g_pids[:10] = -1
    g_cams, q_cams = rng.integers(0, 4, num_g), rng.integers(0, 4, num_q)
    gf = centre[g_pids] + noise * rng.normal(size=(num_g, dim))
    qf = centre[q_pids] + noise * rng.normal(size=(num_q, dim))
    gf, qf = torch.tensor(gf, dtype=torch.float32), torch.tensor(qf, dtype=torch.float32)
    if halves:
        gf = torch.cat([F.normalize(h, dim=1) for h in gf.chunk(2, dim=1)], 1)
        qf = torch.cat([F.normalize(h, dim=1) for h in qf.chunk(2, dim=1)], 1)
    return qf, gf, q_pids, g_pids, q_cams, g_cams


def assert_same_result(a, b):
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert a.mAP == pytest.approx(b.mAP, abs=1e-12)
    assert a.mINP == pytest.approx(b.mINP, abs=1e-12)
    assert (a.num_valid_queries, a.num_skipped_queries) == (b.num_valid_queries, b.num_skipped_queries)


# ----------------------------------------------------------------------------- exact ranking

@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_search_is_brute_force(metric):
    g, _ = clustered(300, 32, 10, seed=1)
    q, _ = clustered(25, 32, 10, seed=2)
    if metric == "cosine":  # brute force in numpy: normalise, largest inner product first
        gn, qn = g / np.linalg.norm(g, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
        ref = 1 - qn.astype(np.float64) @ gn.T.astype(np.float64)
    else:
        ref = ((q[:, None, :].astype(np.float64) - g[None].astype(np.float64)) ** 2).sum(-1)
    dist, ids = GalleryIndex(32, metric=metric).add(g).search(q, 20)
    np.testing.assert_array_equal(ids.numpy(), np.argsort(ref, axis=1, kind="stable")[:, :20])
    np.testing.assert_allclose(dist.numpy(), np.sort(ref, axis=1)[:, :20], atol=1e-4 * (1 + ref.max()))


def test_cosine_ranking_is_euclidean_ranking_of_normalised_vectors():
    g, _ = clustered(200, 48, 8, seed=3)
    q, _ = clustered(15, 48, 8, seed=4)
    d = compute_distance_matrix(F.normalize(torch.from_numpy(q), dim=1),
                                F.normalize(torch.from_numpy(g), dim=1), "euclidean")
    dist, ids = GalleryIndex(48).add(g).search(q, 200)
    np.testing.assert_array_equal(ids.numpy(), d.argsort(1).numpy())
    torch.testing.assert_close(dist, d.sort(1).values / 2, atol=2e-5, rtol=0)  # |q-g|^2 = 2 (1 - cos)


def test_scaled_inputs_are_normalised_for_cosine():
    g, _ = clustered(150, 16, 5, seed=5)
    q, _ = clustered(10, 16, 5, seed=6)
    scale = np.random.default_rng(0).uniform(0.1, 10, size=(150, 1)).astype(np.float32)
    d1, i1 = GalleryIndex(16).add(g).search(q, 10)
    d2, i2 = GalleryIndex(16).add(g * scale).search(3 * q, 10)
    np.testing.assert_array_equal(i1.numpy(), i2.numpy())
    torch.testing.assert_close(d1, d2, atol=1e-5, rtol=0)
    # euclidean keeps the raw vectors: scaling the gallery changes its ranking
    assert not torch.equal(GalleryIndex(16, metric="euclidean").add(g * scale).search(q, 10)[1], i1)


def test_torch_and_numpy_inputs_and_custom_ids():
    g, _ = clustered(100, 8, 4, seed=7)
    ids = np.arange(100) * 10 + 5
    d1, i1 = GalleryIndex(8).add(torch.from_numpy(g), ids=torch.from_numpy(ids)).search(torch.from_numpy(g[:5]), 3)
    d2, i2 = GalleryIndex(8).add(g).search(g[:5], 3)
    np.testing.assert_array_equal(i1.numpy(), ids[i2.numpy()])
    assert (i1[:, 0].numpy() == ids[:5]).all() and d1.dtype == torch.float32 and i1.dtype == torch.int64


# ----------------------------------------------------------------------------- evaluation

@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_evaluate_with_index_equals_evaluate_features(metric):
    qf, gf, qp, gp, qc, gc = reid_problem(seed=11)
    res = evaluate_with_index(GalleryIndex(64, metric=metric).add(gf), qf, qp, gp, qc, gc)
    ref = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric)
    assert 0.1 < ref.mAP < 0.95          # a non-trivial problem
    assert_same_result(res, ref)


def test_package_features_cosine_index_equals_default_euclidean_evaluation():
    # HA-CNN's eval feature: two unit halves (norm sqrt 2); the default evaluation is euclidean
    qf, gf, qp, gp, qc, gc = reid_problem(dim=1024, seed=12, halves=True)
    torch.testing.assert_close(gf.norm(dim=1), torch.full((len(gf),), 2 ** 0.5))
    res = evaluate_with_index(GalleryIndex(1024).add(gf), qf, qp, gp, qc, gc)
    assert_same_result(res, evaluate_features(qf, gf, qp, gp, qc, gc))


def test_ties_are_pessimistic_as_in_the_package():
    # Query at the origin; gallery: a true match and a non-match both at squared distance 1,
    # a second true match at 4, a non-match at 9. Pessimistic: match ranks 2 and 3.
    gf = torch.tensor([[1.0, 0], [0, 1], [2, 0], [0, 3]])
    g_pids, g_cams = np.array([1, 2, 1, 3]), np.array([1, 1, 1, 1])
    qf, q_pids, q_cams = torch.zeros(1, 2), np.array([1]), np.array([0])
    res = evaluate_with_index(GalleryIndex(2, metric="euclidean").add(gf), qf, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_allclose(res.cmc, [0, 1, 1, 1])
    assert res.mAP == pytest.approx((1 / 2 + 2 / 3) / 2) and res.mINP == pytest.approx(2 / 3)
    assert_same_result(res, evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams))


def test_many_ties_equal_package_exactly():
    # small integer features: squared distances are exact in float32 (FAISS) and float64 (the
    # reference matrix), so ties are real ties; the package ranks that matrix with evaluate()
    rng = np.random.default_rng(13)
    gf, qf = rng.integers(-2, 3, (300, 6)).astype(np.float32), rng.integers(-2, 3, (40, 6)).astype(np.float32)
    gp, qp = rng.integers(-1, 12, 300), rng.integers(0, 12, 40)
    gc, qc = rng.integers(0, 3, 300), rng.integers(0, 3, 40)
    index = GalleryIndex(6, metric="euclidean").add(gf)
    dist, _ = index.search(qf, 300)
    assert (dist[:, 1:] == dist[:, :-1]).float().mean() > 0.5      # most neighbours are tied
    exact = ((qf[:, None].astype(np.float64) - gf[None]) ** 2).sum(-1)
    assert_same_result(evaluate_with_index(index, qf, qp, gp, qc, gc), evaluate(exact, qp, gp, qc, gc))


def test_truncated_k_gives_lower_bounds():
    qf, gf, qp, gp, qc, gc = reid_problem(seed=14)
    index = GalleryIndex(64).add(gf)
    full = evaluate_with_index(index, qf, qp, gp, qc, gc)
    part = evaluate_with_index(index, qf, qp, gp, qc, gc, k=15)
    assert len(part.cmc) == 15 and part.num_valid_queries == full.num_valid_queries
    assert (part.cmc <= full.cmc[:15] + 1e-12).all() and part.cmc[0] == full.cmc[0]
    assert part.mAP < full.mAP and part.mINP <= full.mINP


# ----------------------------------------------------------------------------- approximate modes

@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_ivf_with_all_cells_probed_equals_exact(metric, seed):
    g, _ = clustered(800, 24, 12, seed=seed)
    q, _ = clustered(30, 24, 12, seed=seed + 100)
    ivf = GalleryIndex(24, "ivf", metric=metric, nlist=16, nprobe=16).train(g).add(g)
    d_ivf, i_ivf = ivf.search(q, 10)
    d_ex, i_ex = GalleryIndex(24, metric=metric).add(g).search(q, 10)
    np.testing.assert_array_equal(i_ivf.numpy(), i_ex.numpy())
    torch.testing.assert_close(d_ivf, d_ex, atol=1e-4, rtol=1e-5)
    _, i_few = ivf.set_params(nprobe=1).search(q, 10)         # one cell: approximate, still valid ids
    assert ((i_few >= -1) & (i_few < 800)).all()


def recall_at(found, truth, k):
    return np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found.numpy(), truth.numpy())])


def test_hnsw_recall_at_10_is_high():
    g, _ = clustered(3000, 32, 60, seed=2)
    q, _ = clustered(100, 32, 60, seed=3)
    _, truth = GalleryIndex(32).add(g).search(q, 10)
    hnsw = GalleryIndex(32, "hnsw", M=16, ef_construction=64, ef_search=64).add(g)
    assert recall_at(hnsw.search(q, 10)[1], truth, 10) >= 0.95
    assert recall_at(hnsw.set_params(ef_search=200).search(q, 10)[1], truth, 10) >= 0.98


def test_ivf_pq_is_approximate_but_useful_and_smaller():
    g, _ = clustered(3000, 32, 30, seed=4)
    q, _ = clustered(50, 32, 30, seed=5)
    _, truth = GalleryIndex(32).add(g).search(q, 10)
    pq = GalleryIndex(32, "ivf", nlist=16, nprobe=16, pq_m=8).train(g).add(g)
    assert recall_at(pq.search(q, 10)[1], truth, 10) >= 0.4
    assert pq.memory_bytes() < GalleryIndex(32).add(g).memory_bytes() / 3


@pytest.mark.parametrize("mode,params", [("exact", {}), ("ivf", dict(nlist=8)),
                                         ("ivf", dict(nlist=8, pq_m=4)), ("hnsw", dict(M=8))])
def test_memory_estimate_matches_serialised_size(mode, params):
    g, _ = clustered(2000, 32, 10, seed=6)
    index = GalleryIndex(32, mode, **params).train(g).add(g)
    actual = len(faiss.serialize_index(index._index)) + 8 * len(g)
    assert index.memory_bytes() == estimate_memory(2000, 32, mode, **params)
    assert abs(index.memory_bytes() - actual) / actual < 0.15


# ----------------------------------------------------------------------------- save / load

@pytest.mark.parametrize("mode,params", [("exact", {}), ("ivf", dict(nlist=8, nprobe=3)),
                                         ("hnsw", dict(M=8, ef_search=20))])
def test_save_load_round_trip(tmp_path, mode, params):
    g, _ = clustered(400, 16, 6, seed=8)
    index = GalleryIndex(16, mode, **params).train(g).add(g, ids=np.arange(400) + 1000)
    path = tmp_path / "gallery.index"
    index.save(path)
    loaded = GalleryIndex.load(path, dim=16, mode=mode)
    assert loaded.config == index.config and len(loaded) == 400
    for a, b in zip(index.search(g[:20], 7), loaded.search(g[:20], 7)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert os.listdir(tmp_path) == ["gallery.index"]               # no temp file left


def test_load_checks_feature_size_mode_and_file(tmp_path):
    path = tmp_path / "g.npz"
    GalleryIndex(16).add(np.eye(16, dtype=np.float32)).save(path)
    with pytest.raises(ValueError, match="feature size 1024.*received feature size 16"):
        GalleryIndex.load(path, dim=1024)
    with pytest.raises(ValueError, match="'hnsw' index.*'exact' index"):
        GalleryIndex.load(path, mode="hnsw")
    with pytest.raises(FileNotFoundError, match="no index file"):
        GalleryIndex.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="not a hacnn gallery index"):
        GalleryIndex.load(tmp_path / "bad.npz")


def test_save_fails_cleanly_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "g.npz"
    GalleryIndex(4).add(np.eye(4, dtype=np.float32)).save(path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="existing folder"):
        GalleryIndex(4).save(tmp_path / "nope" / "g.npz")
    def half_write(f, **arrays):                                    # a write that dies midway
        f.write(b"partial")
        raise OSError("disk full")

    with mock.patch("hacnn.index.np.savez", half_write), pytest.raises(OSError, match="disk full"):
        GalleryIndex(4).add(np.eye(4, dtype=np.float32) * 2).save(path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["g.npz"]


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs_are_clear_errors():
    g = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    index = GalleryIndex(8).add(g)
    with pytest.raises(ValueError, match=r"queries: expected \(N, 8\) features.*feature size 8.*\(3, 9\)"):
        index.search(np.zeros((3, 9), np.float32), 5)
    with pytest.raises(ValueError, match=r"features: expected \(N, 8\)"):
        index.add(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"k: expected an int in \[1, 50\]"):
        index.search(g[:2], 51)
    with pytest.raises(ValueError, match="k: expected"):
        index.search(g[:2], 0)
    with pytest.raises(ValueError, match="empty index"):
        GalleryIndex(8).search(g[:2], 1)
    with pytest.raises(ValueError, match="zero rows, first at row 1"):
        GalleryIndex(8).add(np.stack([g[0], np.zeros(8, np.float32)]))
    with pytest.raises(ValueError, match="finite values"):
        index.search(np.full((1, 8), np.nan, np.float32), 1)
    with pytest.raises(ValueError, match="ids: expected a 1-D array of 50"):
        GalleryIndex(8).add(g, ids=np.arange(49))
    assert len(index) == 50                                          # failed calls added nothing


def test_bad_parameters_and_untrained_ivf():
    with pytest.raises(ValueError, match="mode: expected one of"):
        GalleryIndex(8, "lsh")
    with pytest.raises(ValueError, match="parameter 'nprobe'.*for mode 'hnsw'"):
        GalleryIndex(8, "hnsw", nprobe=4)
    with pytest.raises(ValueError, match="pq_m: expected a divisor of the feature size 8"):
        GalleryIndex(8, "ivf", pq_m=3)
    with pytest.raises(ValueError, match="nlist: expected an int >= 1"):
        GalleryIndex(8, "ivf", nlist=0)
    with pytest.raises(ValueError, match="search parameter 'nprobe'"):
        GalleryIndex(8).set_params(nprobe=4)
    g = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    ivf = GalleryIndex(8, "ivf", nlist=32)
    with pytest.raises(ValueError, match=r"call \.train\(sample\) first"):
        ivf.add(g)
    with pytest.raises(ValueError, match="at least 32 rows"):
        ivf.train(g)


def test_evaluate_with_index_checks_gallery_ids():
    qf, gf, qp, gp, qc, gc = reid_problem(seed=15)
    index = GalleryIndex(64).add(gf)
    with pytest.raises(ValueError, match="g_pids: expected a 1-D array of length 240"):
        evaluate_with_index(index, qf, qp, gp[:-1], qc, gc[:-1])
    shifted = GalleryIndex(64).add(gf, ids=np.arange(240) + 1)
    with pytest.raises(ValueError, match="index ids: expected gallery positions"):
        evaluate_with_index(shifted, qf, qp, gp, qc, gc)


# ----------------------------------------------------------------------------- python -m hacnn index

def write_features(path, features):
    """A features .npz as `python -m hacnn extract` writes it (the keys load_features reads)."""
    n = len(features)
    np.savez(path, paths=np.array([f"{i:04d}_c1s1_000000_00.jpg" for i in range(n)]), features=features,
             pids=np.arange(n), camids=np.zeros(n, int), has_id=np.ones(n, bool), root="/gallery",
             precision="fp32", digest="0" * 16)
    return path


def unit_halves(n, dim, seed):
    """(n, dim) float32 features in HA-CNN's eval layout: two L2-normalised halves (one norm)."""
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return torch.cat([F.normalize(h, dim=1) for h in x.chunk(2, dim=1)], 1).numpy()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_cli_exact_index_ranks_as_the_exact_search(tmp_path, capsys, metric):
    from hacnn.__main__ import main
    from hacnn.search import rank

    g, q = unit_halves(60, 16, 0), unit_halves(5, 16, 1)
    npz, out = write_features(tmp_path / "g.npz", g), tmp_path / "sub" / "g.faiss"
    assert main(["index", "--features", str(npz), "--out", str(out), "--metric", metric]) == 0
    assert f"60 vectors x 16-d, exact (Flat, {metric}), built in" in capsys.readouterr().out
    index = GalleryIndex.load(out, dim=16, mode="exact")
    d, i = rank(q, g, 7, index=index)
    ref_d, ref_i = rank(q, g, 7)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(d, ref_d, rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(out.parent)) == ["g.faiss"]               # no temp file left


@pytest.mark.parametrize("argv, summary, config", [
    (["--mode", "hnsw", "--hnsw-m", "8", "--ef-search", "24"], "hnsw (HNSW8,Flat, cosine)", dict(M=8, ef_search=24)),
    (["--mode", "ivf", "--nlist", "4", "--nprobe", "2", "--pq-m", "4", "--pq-bits", "4"], "ivf (IVF4,PQ4x4, cosine)",
     dict(nlist=4, nprobe=2, pq_m=4, pq_bits=4))])
def test_cli_approximate_index_reloads_with_its_options(tmp_path, capsys, argv, summary, config):
    from hacnn.__main__ import main

    npz, out = write_features(tmp_path / "g.npz", unit_halves(200, 16, 2)), tmp_path / "g.faiss"
    assert main(["index", "--features", str(npz), "--out", str(out), *argv]) == 0
    assert f"200 vectors x 16-d, {summary}" in capsys.readouterr().out
    index = GalleryIndex.load(out)
    assert (index.ntotal, index.dim, index.mode) == (200, 16, argv[1])
    assert {k: getattr(index.config, k) for k in config} == config
    np.testing.assert_array_equal(np.sort(index._ids), np.arange(200))


def test_cli_index_refusals_are_one_clear_error_and_write_nothing(tmp_path, capsys):
    from hacnn.__main__ import main

    npz, out = write_features(tmp_path / "g.npz", unit_halves(40, 16, 3)), tmp_path / "g.faiss"
    out.write_bytes(b"old index")
    base = ["index", "--features", str(npz), "--out", str(out)]
    assert main(base) == 1
    assert "g.faiss exists; pass --force" in capsys.readouterr().err and out.read_bytes() == b"old index"
    new = tmp_path / "new.faiss"
    for argv, message in [
            (["--mode", "ivf", "--nlist", "64"], r"at least 64 vectors to train IVF64,Flat .*received 40 vectors"),
            (["--mode", "ivf", "--nlist", "4", "--pq-m", "4", "--pq-bits", "8"],
             r"at least 256 vectors to train IVF4,PQ4x8 .*2\^pq_bits = 256.*received 40 vectors"),
            (["--mode", "hnsw", "--nlist", "8"], r"--nlist: not an option of --mode hnsw")]:
        assert main(["index", "--features", str(npz), "--out", str(new), *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith("hacnn index: error:") and re.search(message, err), err
    (tmp_path / "junk.npz").write_bytes(b"nope")
    for features, message in [("junk.npz", "is not a features file"), ("missing.npz", "features file not found")]:
        assert main(["index", "--features", str(tmp_path / features), "--out", str(new)]) == 1
        assert message in capsys.readouterr().err
    with mock.patch.dict("sys.modules", {"faiss": None}):
        assert main(["index", "--features", str(npz), "--out", str(new)]) == 1
    assert "needs FAISS: pip install -e '.[faiss]'" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["g.faiss", "g.npz", "junk.npz"]
    assert main(base + ["--force"]) == 0 and GalleryIndex.load(out).ntotal == 40


# ----------------------------------------------------------------------------- shortlist (refine)

def test_shortlist_ranks_an_approximate_index_exactly():
    """search.rank(index=, shortlist=n): the index's n candidates ranked by exact distance. With n = G
    the list is the brute-force one (whatever the index's own order); with n between, the top-10
    recall cannot fall below the index's own and here rises; bad values are clear errors."""
    from hacnn.search import rank

    g, _ = clustered(3000, 32, 30, seed=4)
    q, _ = clustered(50, 32, 30, seed=5)
    g, q = g / np.linalg.norm(g, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    exact_d, exact_i = rank(q, g, 10)                                          # brute force, the package
    pq = GalleryIndex(32, "ivf", nlist=16, nprobe=16, pq_m=4).train(g).add(g)
    own = rank(q, g, 10, index=pq)[1]
    listed = rank(q, g, 10, index=pq, shortlist=100)[1]
    whole_d, whole_i = rank(q, g, 10, index=pq, shortlist=len(g))
    np.testing.assert_array_equal(whole_i, exact_i)
    np.testing.assert_allclose(whole_d, exact_d, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rank(q, g, 10, index=pq, shortlist=10 ** 6)[1], exact_i)   # capped at G
    truth = torch.from_numpy(exact_i)
    r_own, r_listed = recall_at(torch.from_numpy(own), truth, 10), recall_at(torch.from_numpy(listed), truth, 10)
    assert r_own < 0.9 and r_listed >= r_own + 0.2, (r_own, r_listed)
    with pytest.raises(ValueError, match=r"shortlist: expected an int >= k \(10\)"):
        rank(q, g, 10, index=pq, shortlist=5)
    with pytest.raises(ValueError, match="shortlist: it is the number of candidates taken from an index"):
        rank(q, g, 10, shortlist=100)
