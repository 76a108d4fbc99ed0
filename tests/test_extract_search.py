"""hacnn.features (folder extraction) and hacnn.search: against extract_features and brute force."""
import csv
import dataclasses
import re
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hacnn import HACNN, features
from hacnn.__main__ import main
from hacnn.checkpoint import atomic_save
from hacnn.data import ImageDataset, ImageReadError, build_transforms
from hacnn.data.base import DatasetLayoutError
from hacnn.evaluation import extract_features
from hacnn.features import choose_precision, extract_folder, list_images, load_features, parse_ids
from hacnn.reranking import re_ranking
from hacnn.search import CSV_COLUMNS, CSV_NAME, rank, search_gallery

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(channels=(32, 64, 96), feat_dim=16, input_size=(32, 16), local_sizes=((8, 8), (4, 4), (2, 2)))
# (relative path, (pid, camera 0-based) or None): Market, Duke and CUHK03-NP names, and others
NAMES = [("0002_c1s1_000451_03.jpg", (2, 0)), ("a/0007_c3s2_000100_01.jpg", (7, 2)),
         ("a/b/-1_c2s1_000001_00.jpg", (-1, 1)), ("duke/0005_c2_f0046985.jpg", (5, 1)),
         ("cuhk/0011_c2_3.png", (11, 1)), ("holiday.png", None), ("Z_last.bmp", None)]


def write_images(root: Path, names=NAMES, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, _ in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(root / name)
    (root / ".hidden.jpg").write_bytes(b"not shown")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def gallery(tmp_path) -> Path:
    return write_images(tmp_path / "gallery")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return HACNN(5, **TINY).eval()


def checkpoint(path: Path, model) -> Path:
    atomic_save({"format": "hacnn", "version": 1, "config": model.config.to_dict(),
                 "model": model.state_dict()}, path)
    return path


def reference_features(model, root: Path, names) -> torch.Tensor:
    items = [(str(root / n), 0, 0) for n in names]
    loader = torch.utils.data.DataLoader(ImageDataset(items, build_transforms(32, 16, train=False)), batch_size=3)
    return extract_features(model, loader, progress=False)[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name)


@pytest.fixture
def gallery_index():
    """hacnn.index.GalleryIndex with FAISS on one thread (skipped without the faiss extra)."""
    faiss = pytest.importorskip("faiss")
    from hacnn.index import GalleryIndex

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield GalleryIndex
    faiss.omp_set_num_threads(before)


# ----------------------------------------------------------------------------- listing and names

def test_list_images_is_recursive_sorted_and_skips_hidden_and_other_files(gallery):
    assert [p.as_posix() for p in list_images(gallery)] == sorted(n for n, _ in NAMES)
    assert [parse_ids(Path(n).name) for n, _ in NAMES] == [i for _, i in NAMES]


# MSMT17 (V1 and V2 name their files alike; V1's list paths carry the pid folder)
MSMT17_NAMES = [("0000_011_01_0303morning_0015_0.jpg", (0, 0)), ("0000/0000_000_01_0303morning_0036_0.jpg", (0, 0)),
                ("1040_003_15_0113noon_0102_1.jpg", (1040, 14)), ("3059_016_07_0302afternoon_1092_2.jpg", (3059, 6)),
                ("0001_02_03.jpg", None), ("0001_002_03_0303morning_0001_0.png", None)]
CROPS = [("p0012-cam3-001.png", (12, 3)), ("p0012-cam1-002.jpg", (12, 1)), ("sub/p0030-cam2-001.png", (30, 2)),
         ("readme.png", None)]
CROP_PATTERN = r"p(?P<identity>\d+)-cam(?P<camera>\d+)-\d+"


def test_parse_ids_reads_msmt17_names_and_a_pattern():
    assert [parse_ids(n) for n, _ in MSMT17_NAMES] == [i for _, i in MSMT17_NAMES]
    assert [parse_ids(n, CROP_PATTERN) for n, _ in CROPS] == [i for _, i in CROPS]
    assert parse_ids("p7-x.jpg", r"p(?P<identity>-?\d+)-.*") == (7, -1)          # no camera group: -1
    assert parse_ids("0002_c1s1_000451_03.jpg", CROP_PATTERN) is None             # the pattern alone


def test_extract_with_a_pattern_counts_the_names_it_misses(model, tmp_path):
    root, out = write_images(tmp_path / "crops", CROPS), tmp_path / "f.npz"
    with pytest.warns(RuntimeWarning, match=r"does not match 1 of 4 file names under '.*crops', e\.g\. 'readme\.png'"):
        extract_folder(model, root, out, pattern=CROP_PATTERN, precision="fp32", progress=False)
    z, ids = load_features(out), dict(CROPS)
    assert z.paths == sorted(ids)
    np.testing.assert_array_equal(z.has_id, [ids[n] is not None for n in z.paths])
    np.testing.assert_array_equal(z.pids, [ids[n][0] if ids[n] else -1 for n in z.paths])
    np.testing.assert_array_equal(z.camids, [ids[n][1] if ids[n] else -1 for n in z.paths])


@pytest.mark.parametrize("pattern, error, message", [
    (r"p(\d+)-cam(?P<camera>\d+)-.*", ValueError, "has no named group 'identity'"),
    (r"person(?P<identity>\d+)_.*", DatasetLayoutError, r"matches none of the 4 file names under '.*crops'"),
    (r"(?P<identity>[a-z]+)\d*.*", ValueError, r"'p0012-cam1-002\.jpg': the pattern's identity 'p' is not an integer"),
    ("(?P<identity>[", ValueError, "is not a valid regular expression"),
], ids=["no-identity-group", "matches-no-file", "non-integer-identity", "invalid-regex"])
def test_a_bad_pattern_is_one_clear_error_and_writes_nothing(tmp_path, capsys, pattern, error, message):
    root, out = write_images(tmp_path / "crops", CROPS), tmp_path / "f.npz"
    with pytest.raises(error, match=message):
        extract_folder(HACNN(5, **TINY), root, out, pattern=pattern, progress=False)
    w = checkpoint(tmp_path / "w.pth", HACNN(5, **TINY))
    assert main(["extract", "--weights", str(w), "--images", str(root), "--out", str(out), "--pattern", pattern]) == 1
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists() and not (tmp_path / "f.npz.parts").exists() and leftovers(tmp_path) == []


def test_no_images_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no images .* under '.*empty'"):
        extract_folder(HACNN(5, **TINY), tmp_path / "empty", tmp_path / "f.npz", progress=False)
    with pytest.raises(DatasetLayoutError, match="is not a folder"):
        list_images(tmp_path / "missing")
    assert not (tmp_path / "f.npz").exists()


# ----------------------------------------------------------------------------- extraction

def test_npz_holds_the_features_of_extract_features(gallery, model, tmp_path):
    out = tmp_path / "feats.npz"
    r = extract_folder(checkpoint(tmp_path / "w.pth", model), gallery, out, precision="fp32",
                       batch_size=3, progress=False)
    z = load_features(out, feature_dim=model.feature_dim)
    expected_names = sorted(n for n, _ in NAMES)
    assert z.paths == r.paths == expected_names
    ref = reference_features(model, gallery, expected_names)
    np.testing.assert_allclose(z.features, ref.numpy(), atol=1e-6, rtol=0)
    ids = dict(NAMES)
    np.testing.assert_array_equal(z.has_id, [ids[n] is not None for n in expected_names])
    np.testing.assert_array_equal(z.pids, [ids[n][0] if ids[n] else -1 for n in expected_names])
    np.testing.assert_array_equal(z.camids, [ids[n][1] if ids[n] else -1 for n in expected_names])
    assert z.root == str(gallery.resolve()) and z.precision == "fp32" and z.digest == features.model_digest(model)
    assert leftovers(tmp_path) == [] and not (tmp_path / "feats.npz.parts").exists()
    with pytest.raises(FileExistsError, match="pass --force"):
        extract_folder(model, gallery, out, progress=False)


def test_bf16_path_is_checked_against_fp32_on_the_first_batch(model):
    x = torch.randn(4, 3, 32, 16)
    with mock.patch("hacnn.training.native_bf16", return_value=True):
        _, _, chosen = choose_precision(model, x)
        assert chosen == "bf16"
        with pytest.warns(RuntimeWarning, match=r"bf16 features differ from fp32 .*cosine similarity [01]\.\d{5} < 1\.1"):
            net, _, chosen = choose_precision(model, x, min_cosine=1.1)    # unreachable: falls back
    assert chosen == "fp32" and next(net.parameters()).dtype == torch.float32
    with mock.patch("hacnn.training.native_bf16", return_value=False):
        assert choose_precision(model, x)[2] == "fp32"
    net16, layout, _ = choose_precision(model, x, precision="bf16")
    f16 = net16(x.to(torch.bfloat16).contiguous(memory_format=layout)).float()
    cos = torch.nn.functional.cosine_similarity(f16, model(x).detach(), dim=1)
    assert cos.min() > features.BF16_MIN_COSINE


def test_an_interrupted_run_resumes_from_its_chunks(gallery, model, tmp_path):
    out, calls = tmp_path / "f.npz", []
    real = features._batch_features

    def failing(net, x, *a):
        calls.append(len(x))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(net, x, *a)

    with mock.patch.object(features, "CHUNK", 2), mock.patch.object(features, "_batch_features", failing):
        with pytest.raises(KeyboardInterrupt):
            extract_folder(model, gallery, out, batch_size=2, precision="fp32", progress=False)
    assert not out.exists() and sorted(p.name for p in (tmp_path / "f.npz.parts").iterdir()) == \
        ["manifest.json", "part-00000.npz", "part-00001.npz"]
    calls.clear()
    with mock.patch.object(features, "CHUNK", 2), mock.patch.object(features, "_batch_features",
                                                                     lambda *a: calls.append(1) or real(*a)):
        resumed = extract_folder(model, gallery, out, batch_size=2, precision="fp32", progress=False)
    assert len(calls) == 2                                   # 7 images: chunks 3 and 4 only
    fresh = extract_folder(model, gallery, None, precision="fp32", progress=False)
    np.testing.assert_allclose(resumed.features, fresh.features, atol=1e-6, rtol=0)
    assert not (tmp_path / "f.npz.parts").exists()
    # other weights: the old chunks are not reused
    with mock.patch.object(features, "CHUNK", 2), mock.patch.object(features, "_batch_features", failing):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            extract_folder(model, gallery, tmp_path / "g.npz", batch_size=2, precision="fp32", progress=False)
    other = HACNN(5, **TINY).eval()
    with mock.patch.object(features, "CHUNK", 2):
        r = extract_folder(other, gallery, tmp_path / "g.npz", precision="fp32", progress=False)
    np.testing.assert_allclose(r.features, reference_features(other, gallery, r.paths).numpy(), atol=1e-6, rtol=0)


def test_a_corrupt_image_names_the_file_or_is_skipped_with_a_count(gallery, model, tmp_path):
    bad = gallery / "a" / "0007_c3s2_000100_01.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "f.npz"
    with pytest.raises(ImageReadError, match=re.escape(str(bad))):
        extract_folder(model, gallery, out, precision="fp32", progress=False)
    assert not out.exists() and leftovers(tmp_path) == []
    with pytest.warns(RuntimeWarning, match=r"skipped 1 of 7 images under .* a/0007_c3s2_000100_01\.jpg"):
        r = extract_folder(model, gallery, out, precision="fp32", skip_corrupt=True, progress=False)
    z = load_features(out)
    assert "a/0007_c3s2_000100_01.jpg" not in z.paths and len(z.paths) == 6 and r.skipped == ("a/0007_c3s2_000100_01.jpg",)
    np.testing.assert_allclose(z.features, reference_features(model, gallery, z.paths).numpy(), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- ranking

def brute_force(qf, gf):
    d = ((qf[:, None, :].astype(np.float64) - gf[None].astype(np.float64)) ** 2).sum(-1)   # (Q, G)
    return d, np.argsort(d, axis=1, kind="stable")


def test_rank_equals_brute_force_argsort_and_plugs_in_an_index():
    rng = np.random.default_rng(0)
    qf, gf = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    d, i = rank(qf, gf, 5)
    ref_d, ref_i = brute_force(qf, gf)
    np.testing.assert_array_equal(i, ref_i[:, :5])
    np.testing.assert_allclose(d, np.take_along_axis(ref_d, ref_i[:, :5], 1), rtol=1e-5, atol=1e-5)
    assert rank(qf, gf, 100)[1].shape == (4, 30)                       # k capped at G

    class Index:                                                     # the FAISS-style interface
        def search(self, queries, k):
            dd, ii = brute_force(queries, gf)
            return np.take_along_axis(dd, ii[:, :k], 1), ii[:, :k]
    np.testing.assert_array_equal(rank(qf, Index(), 5)[1], ref_i[:, :5])
    with pytest.raises(ValueError, match="re-ranking needs the gallery feature matrix"):
        rank(qf, Index(), 5, rerank=True)
    with pytest.raises(ValueError, match="k: expected a positive int"):
        rank(qf, gf, 0)
    rr = re_ranking(ref_d, brute_force(qf, qf)[0], brute_force(gf, gf)[0], k1=4, k2=2)
    np.testing.assert_array_equal(rank(qf, gf, 5, rerank=True, k1=4, k2=2)[1],
                                  np.argsort(rr, axis=1, kind="stable")[:, :5])


def test_search_writes_the_csv_and_one_figure_per_query(gallery, model, tmp_path):
    w = checkpoint(tmp_path / "w.pth", model)
    feats = extract_folder(w, gallery, tmp_path / "g.npz", precision="fp32", progress=False)
    queries = [gallery / "0002_c1s1_000451_03.jpg", gallery / "holiday.png"]
    r = search_gallery(w, queries, tmp_path / "g.npz", tmp_path / "out", topk=3, progress=False)
    qf = reference_features(model, Path("/"), [str(q) for q in queries]).numpy()
    ref_d, ref_i = brute_force(qf, feats.features)
    np.testing.assert_array_equal(r.indices, ref_i[:, :3])
    rows = list(csv.DictReader(open(tmp_path / "out" / CSV_NAME)))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 6
    for n, row in enumerate(rows):
        a, k = divmod(n, 3)
        g = feats.paths[ref_i[a, k]]
        assert (row["query"], int(row["rank"]), row["gallery"]) == (str(queries[a]), k + 1, g)
        assert float(row["distance"]) == pytest.approx(ref_d[a, ref_i[a, k]], rel=1e-4, abs=1e-5)
        assert row["query_pid"] == ("2" if a == 0 else "")
        gid = dict(NAMES)[g]
        assert row["gallery_pid"] == (str(gid[0]) if gid else "")
    assert rows[0]["gallery"] == "0002_c1s1_000451_03.jpg" and float(rows[0]["distance"]) < 1e-4   # itself first
    assert sorted(p.name for p in r.figures) == ["query-000-0002_c1s1_000451_03.png", "query-001-holiday.png"]
    assert all(p.stat().st_size > 0 for p in r.figures)
    with pytest.raises(FileExistsError, match="ranking.csv exists"):
        search_gallery(w, queries, tmp_path / "g.npz", tmp_path / "out", progress=False)
    # a folder gallery gives the same ranking
    r2 = search_gallery(w, queries, gallery, None, topk=3, precision="fp32", progress=False)
    np.testing.assert_array_equal(r2.indices, r.indices)


def test_a_gallery_of_another_feature_size_is_refused(gallery, model, tmp_path):
    wide = HACNN(5, **{**TINY, "feat_dim": 24}).eval()
    extract_folder(wide, gallery, tmp_path / "g.npz", precision="fp32", progress=False)
    with pytest.raises(ValueError, match=r"g\.npz holds 48-d features, but the model gives 32-d"):
        search_gallery(model, [gallery / "holiday.png"], tmp_path / "g.npz", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "junk.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="is not a features file"):
        load_features(tmp_path / "junk.npz")


# ----------------------------------------------------------------------------- a FAISS index

def two_unit_halves(n, dim, seed):
    """(n, dim) features in HA-CNN's eval layout: two L2-normalised halves (norm sqrt 2)."""
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return torch.cat([F.normalize(h, dim=1) for h in x.chunk(2, dim=1)], 1).numpy()


def ternary(n, dim, seed):
    """(n, dim) features of +-0.5 and 0 (4 non-zeros per half): every distance exact, many ties."""
    rng, x = np.random.default_rng(seed), np.zeros((n, dim), np.float32)
    for half in (0, dim // 2):
        for row in x:
            row[half + rng.choice(dim // 2, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return x


@pytest.mark.parametrize("index_metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_rank_through_an_exact_index_equals_the_exact_path(gallery_index, index_metric, metric):
    gf, qf = two_unit_halves(60, 32, 0), two_unit_halves(6, 32, 1)
    gf[[20, 41]] = gf[7]                                              # tied rows
    index = gallery_index(32, metric=index_metric).add(gf)
    for k in (5, 60):
        d, i = rank(qf, gf, k, metric=metric)
        di, ii = rank(qf, gf, k, metric=metric, index=index)
        np.testing.assert_array_equal(ii, i)
        np.testing.assert_allclose(di, d, rtol=1e-5, atol=1e-6)
    # exact ties everywhere: within the k, the gallery order, as the exact path
    gf, qf = ternary(40, 32, 2), ternary(25, 32, 3)
    gf[[20, 33]], qf[0] = gf[5], gf[5]
    index = gallery_index(32, metric=index_metric).add(gf)
    d, i = rank(qf, gf, 40, metric=metric)
    di, ii = rank(qf, gf, 40, metric=metric, index=index)
    assert (np.diff(d, axis=1) == 0).sum() > 500                        # it does test ties
    np.testing.assert_array_equal(ii, i), np.testing.assert_array_equal(di, d)
    assert list(ii[0, :3]) == [5, 20, 33]
    d5, _ = rank(qf, gf, 5, metric=metric, index=index)                # at the k-th: FAISS's choice
    np.testing.assert_array_equal(d5, d[:, :5])


def test_cli_search_through_a_saved_exact_index_writes_the_exact_csv(gallery, model, tmp_path, capsys, gallery_index):
    w = checkpoint(tmp_path / "w.pth", model)
    feats = extract_folder(w, gallery, tmp_path / "g.npz", precision="fp32", progress=False)
    gallery_index(model.feature_dim).add(feats.features).save(tmp_path / "g.faiss")
    args = ["search", "--weights", str(w), "--query", str(gallery / "0002_c1s1_000451_03.jpg"),
            str(gallery / "holiday.png"), "--gallery", str(tmp_path / "g.npz"), "--topk", "4", "--no-progress",
            "--no-figures"]
    assert main(args + ["--out", str(tmp_path / "exact")]) == 0
    assert main(args + ["--out", str(tmp_path / "faiss"), "--index", str(tmp_path / "g.faiss")]) == 0
    assert "through " in capsys.readouterr().out
    exact, via = (list(csv.DictReader(open(tmp_path / d / CSV_NAME))) for d in ("exact", "faiss"))
    assert len(exact) == 8 and [{**r, "distance": ""} for r in via] == [{**r, "distance": ""} for r in exact]
    np.testing.assert_allclose([float(r["distance"]) for r in via], [float(r["distance"]) for r in exact],
                               rtol=1e-5, atol=1e-6)
    # --shortlist: the index's 7 candidates (the whole gallery) ranked exactly: the same CSV again;
    # without --index, or below --topk, one clear error before anything is written
    assert main(args + ["--out", str(tmp_path / "short"), "--index", str(tmp_path / "g.faiss"),
                        "--shortlist", "7"]) == 0
    short = list(csv.DictReader(open(tmp_path / "short" / CSV_NAME)))
    assert [{**r, "distance": ""} for r in short] == [{**r, "distance": ""} for r in exact]
    capsys.readouterr()
    for extra, message in [(["--shortlist", "7"], "shortlist: it is the number of candidates taken from an index"),
                           (["--index", str(tmp_path / "g.faiss"), "--shortlist", "3"],
                            r"shortlist: expected an int >= k \(4\)")]:
        assert main(args + ["--out", str(tmp_path / "bad"), *extra]) == 1
        assert re.search(message, capsys.readouterr().err)
        assert not (tmp_path / "bad").exists()


def test_index_bad_inputs_are_clear_errors_and_write_nothing(gallery, model, tmp_path, capsys, gallery_index):
    feats = extract_folder(model, gallery, None, precision="fp32", progress=False)          # 7 x 32
    full, out, query = gallery_index(32).add(feats.features), tmp_path / "out", [gallery / "holiday.png"]
    gallery_index(16).add(np.ones((7, 16), np.float32)).save(tmp_path / "narrow.faiss")
    varying = dataclasses.replace(feats, features=feats.features * np.arange(1, 8, dtype=np.float32)[:, None])
    for gal, kw, message in [
            (feats, dict(index=tmp_path / "narrow.faiss"), r"expected an index for feature size 32.* feature size 16"),
            (feats, dict(index=gallery_index(16).add(np.ones((7, 16), np.float32))), r"feature size 32 .*feature size 16"),
            (feats, dict(index=full, topk=8), r"topk: expected at most 7, the size of the gallery index, received 8"),
            (feats, dict(index=full, rerank=True), r"re-ranking needs the full query-gallery and gallery-gallery"),
            (feats, dict(index=gallery_index(32).add(feats.features[:5])), r"expected the 7 gallery rows .* received 5"),
            (varying, dict(index=gallery_index(32).add(varying.features)), r"'cosine' index ranks as the 'euclidean'"),
            (gallery, dict(index=full), r"expected the gallery as the features \.npz .* received the folder")]:
        with pytest.raises(ValueError, match=message):
            search_gallery(model, query, gal, out, progress=False, **{"topk": 3, **kw})
        assert not out.exists()
    with pytest.raises(ValueError, match=r"a 'cosine' GalleryIndex gives cosine distances"):
        rank(feats.features[:2], full, 3)                             # an index alone: its own metric only
    w = checkpoint(tmp_path / "w.pth", model)
    extract_folder(w, gallery, tmp_path / "g.npz", precision="fp32", progress=False)
    assert main(["search", "--weights", str(w), "--query", str(query[0]), "--gallery", str(tmp_path / "g.npz"),
                 "--index", str(tmp_path / "narrow.faiss"), "--out", str(out), "--no-progress"]) == 1
    assert re.search(r"error: index '.*narrow\.faiss': expected an index for feature size 32", capsys.readouterr().err)
    assert not out.exists()


# ----------------------------------------------------------------------------- command line

def test_cli_extract_and_search(gallery, model, tmp_path, capsys):
    w = checkpoint(tmp_path / "w.pth", model)
    assert main(["extract", "--weights", str(w), "--images", str(gallery), "--out", str(tmp_path / "g.npz"),
                 "--precision", "fp32", "--no-progress"]) == 0
    assert "7 images x 32-d features (fp32), 5 with ids" in capsys.readouterr().out
    assert main(["extract", "--weights", str(w), "--images", str(gallery), "--out", str(tmp_path / "g.npz")]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert main(["search", "--weights", str(w), "--query", str(gallery / "holiday.png"), "--gallery",
                 str(tmp_path / "g.npz"), "--out", str(tmp_path / "out"), "--topk", "2", "--no-progress",
                 "--no-figures"]) == 0
    assert len(list(csv.DictReader(open(tmp_path / "out" / CSV_NAME)))) == 2
    assert main(["search", "--weights", str(w), "--query", str(tmp_path / "nope.jpg"), "--gallery",
                 str(tmp_path / "g.npz"), "--out", str(tmp_path / "o2")]) == 1
    assert "query images not found" in capsys.readouterr().err
    (gallery / "holiday.png").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["extract", "--weights", str(w), "--images", str(gallery), "--out", str(tmp_path / "h.npz"),
                     "--no-progress"]) == 1
    assert re.search(r"error: cannot read image '.*holiday\.png': empty file", capsys.readouterr().err)
    assert not (tmp_path / "h.npz").exists()


@pytest.mark.parametrize("command, flags", [
    ("extract", ["--weights", "--images", "--out", "--precision", "--skip-corrupt", "--force", "--pattern"]),
    ("index", ["--features", "--out", "--mode", "--metric", "--nlist", "--nprobe", "--pq-m", "--pq-bits",
               "--hnsw-m", "--ef-construction", "--ef-search", "--force"]),
    ("search", ["--weights", "--query", "--gallery", "--topk", "--out", "--rerank", "--metric", "--index",
                "--shortlist"]),
    ("export", ["--weights", "--out", "--opset", "--batch", "--dynamo"]),
])
def test_subcommand_help(capsys, command, flags):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in flags)
