"""Your own data (hacnn.data.folder), the CUHK03 camera-pair preset and the "nocam" protocol."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from fixtures import write_image
from hacnn.data import (CUHK03Pair, DatasetLayoutError, ImageFolderReID, UnmatchedQueryWarning,
                        build_dataset)
from hacnn.data.folder import natural_key
from hacnn.evaluation import evaluate, evaluate_features

# identity folder -> file names (camera in the name as c<k>_...)
PEOPLE = {
    "alice": ["c1_a.jpg", "c1_b.jpg", "c2_a.jpg", "c2_b.jpg"],
    "bob": ["c2_x.png", "c2_y.png", "c3_y.png", "c3_z.png"],
    "id10": ["c1_0.jpg", "c1_1.jpg", "c3_0.jpg", "c3_1.jpg"],
    "id2": ["c1_0.jpg", "c1_1.jpg", "c2_0.jpg", "c2_1.jpg"],
    "zoe": ["c2_0.jpg", "c2_1.jpg", "c1_5.jpg", "c1_6.jpg"],
    "ölaf": ["c3_0.jpg", "c3_1.jpg", "c1_0.jpg", "c1_1.jpg"],
}
CAMERA_PATTERN = r"c(?P<camera>\d)_.*"


def identity_folders(root: Path, people=PEOPLE) -> Path:
    for k, (person, files) in enumerate(people.items()):
        for j, name in enumerate(files):
            write_image(root / person / name, color=(20 * k, 30 * j, 90))
    return root


def flat(root: Path, names) -> Path:
    for k, name in enumerate(names):
        write_image(root / name, color=(10 * k % 256, 50, 60))
    return root


def tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


def who(data, items) -> list[tuple[str, str, int]]:
    """(identity name, file name, camid) of each item, names from the reader's maps."""
    names = data.test_identity_names
    return [(names[pid], Path(path).name, cam) for path, pid, cam in items]


# ----------------------------------------------------------------------------- "nocam" protocol

def brute_force_nocam(dist, q_pids, g_pids):
    """Per query: sort the non-junk gallery by distance, non-matches first at ties
    (pessimistic), and read off the positions of every same-pid item."""
    firsts, aps, inps = [], [], []
    for i in range(len(q_pids)):
        valid = np.flatnonzero(g_pids != -1)
        order = sorted(valid, key=lambda g: (dist[i, g], g_pids[g] == q_pids[i]))
        ranks = [pos for pos, g in enumerate(order, start=1) if g_pids[g] == q_pids[i]]
        if not ranks:
            continue
        firsts.append(ranks[0])
        aps.append(np.mean([k / r for k, r in enumerate(ranks, start=1)]))
        inps.append(len(ranks) / ranks[-1])
    return np.array(firsts), float(np.mean(aps)), float(np.mean(inps))


@pytest.mark.parametrize("seed", range(4))
def test_nocam_protocol_matches_a_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    q, g = 9, 30
    dist = rng.integers(0, 6, size=(q, g)).astype(np.float64)   # many ties
    g_pids = rng.integers(-1, 5, size=g)                           # -1: junk
    q_pids = rng.integers(0, 6, size=q)                            # 5: never in the gallery
    cams = np.zeros(g, dtype=int)
    res = evaluate(dist, q_pids, g_pids, np.zeros(q, dtype=int), cams, protocol="nocam", max_rank=g)
    firsts, mAP, mINP = brute_force_nocam(dist, q_pids, g_pids)
    assert res.num_valid_queries == len(firsts)
    assert res.num_skipped_queries == q - len(firsts)
    np.testing.assert_allclose(res.cmc, [(firsts <= k).mean() for k in range(1, g + 1)])
    assert res.mAP == pytest.approx(mAP) and res.mINP == pytest.approx(mINP)


def test_nocam_ignores_cameras_and_market_would_lose_every_match():
    # gallery g0..g3; the query (pid 1) is closest to g1 (pid 2), then g0 and g2 (pid 1)
    dist = np.array([[0.2, 0.1, 0.3, 0.4]])
    g_pids, g_cams = np.array([1, 2, 1, 3]), np.array([0, 0, 0, 0])
    nocam = evaluate(dist, [1], g_pids, [0], g_cams, protocol="nocam")
    # matches at ranks 2 and 3 (hand-worked): AP = (1/2 + 2/3) / 2, INP = 2/3
    assert nocam.cmc[:3].tolist() == [0.0, 1.0, 1.0]
    assert nocam.mAP == pytest.approx((1 / 2 + 2 / 3) / 2) and nocam.mINP == pytest.approx(2 / 3)
    market = evaluate(dist, [1], g_pids, [0], g_cams, protocol="market")   # one camera: no match
    assert market.num_skipped_queries == 1 and np.isnan(market.mAP)
    # the cameras play no role under nocam
    other = evaluate(dist, [1], g_pids, [5], [0, 1, 2, 3], protocol="nocam")
    assert other.mAP == nocam.mAP
    feats = evaluate_features(np.array([[0.0]]), np.sqrt(dist.T), [1], g_pids, [0], g_cams,
                              protocol="nocam")
    assert feats.mAP == pytest.approx(nocam.mAP)


def test_leave_one_out_is_market_with_one_camid_per_image():
    """The documented way to rank a set against itself: each image its own camera."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3))
    pids = np.array([1, 1, 2, 2, 2, 3, 3, 4])
    own = np.arange(8)
    loo = evaluate_features(x, x, pids, pids, own, own, protocol="market", max_rank=7)
    firsts, aps = [], []
    for i in range(8):   # each query alone against the others (its own item left out)
        rest = np.delete(np.arange(8), i)
        single = evaluate_features(x[i:i + 1], x[rest], pids[i:i + 1], pids[rest], [0],
                                   np.zeros(7, dtype=int), protocol="nocam", max_rank=7)
        if single.num_valid_queries:
            firsts.append(single.cmc), aps.append(single.mAP)
    assert loo.num_skipped_queries == 1 and len(aps) == 7      # pid 4 has a single image
    assert loo.mAP == pytest.approx(np.mean(aps))
    np.testing.assert_allclose(loo.cmc, np.mean(firsts, axis=0))


# ----------------------------------------------------------------------------- identity folders, pool

def test_identity_folders_pool_split_is_seeded_and_by_identity(tmp_path):
    root = identity_folders(tmp_path / "crops")
    data = ImageFolderReID(root, pattern=CAMERA_PATTERN, test_ids=2, split_seed=3)
    names = sorted(PEOPLE, key=natural_key)
    assert names == ["alice", "bob", "id2", "id10", "zoe", "ölaf"]           # natural order
    order = np.random.default_rng(3).permutation(len(names))
    test = sorted((names[i] for i in order[:2]), key=natural_key)
    train = [n for n in names if n not in test]
    assert sorted(data.test_identity_names.values(), key=natural_key) == test
    assert list(data.identity_names.values()) == train                    # labels 0..N-1 in order
    assert sorted({pid for _, pid, _ in data.train}) == list(range(len(train)))
    assert len(data.train) == sum(len(PEOPLE[n]) for n in train)
    assert len(data.query) + len(data.gallery) == sum(len(PEOPLE[n]) for n in test)
    assert data.camera_names == ["1", "2", "3"] and data.protocol == "market"
    again = ImageFolderReID(root, pattern=CAMERA_PATTERN, test_ids=2, split_seed=3)
    assert (again.train, again.query, again.gallery) == (data.train, data.query, data.gallery)
    splits = {frozenset(ImageFolderReID(root, pattern=CAMERA_PATTERN, test_ids=2,
                                        split_seed=s).test_identity_names.values()) for s in range(6)}
    assert len(splits) > 1                                                # the seed matters


def test_one_query_per_identity_and_camera(tmp_path):
    root = identity_folders(tmp_path / "crops")
    data = ImageFolderReID(root, pattern=CAMERA_PATTERN, test_ids=5, split_seed=0)
    test = set(data.test_identity_names.values())
    expected_q, expected_g = [], []
    for person in sorted(test):
        seen = set()
        for name in sorted(PEOPLE[person]):
            cam = name[:2]
            (expected_g if cam in seen else expected_q).append((person, name, int(cam[1]) - 1))
            seen.add(cam)
    assert sorted(who(data, data.query)) == sorted(expected_q)
    assert sorted(who(data, data.gallery)) == sorted(expected_g)


def test_fraction_of_identities(tmp_path):
    root = identity_folders(tmp_path / "crops")
    data = ImageFolderReID(root, pattern=CAMERA_PATTERN, test_ids=0.3)     # round(1.8) = 2
    assert len(data.test_identity_names) == 2 and data.num_train_pids == 4


# ----------------------------------------------------------------------------- no cameras

def test_without_cameras_the_protocol_is_nocam(tmp_path):
    root = identity_folders(tmp_path / "crops")
    data = ImageFolderReID(root, test_ids=3, split_seed=1)
    assert data.protocol == "nocam" and data.camera_names == []
    assert {cam for _, _, cam in data.train + data.query + data.gallery} == {0}
    test = data.test_identity_names.values()
    # one query per identity: its first file; the others are its gallery
    assert sorted(who(data, data.query)) == sorted((p, sorted(PEOPLE[p])[0], 0) for p in test)
    assert sorted(who(data, data.gallery)) == sorted(
        (p, n, 0) for p in test for n in sorted(PEOPLE[p])[1:])
    assert not {p for p, _, _ in data.query} & {p for p, _, _ in data.gallery}   # no shared file


def test_registry_and_experiment_use_the_readers_protocol(tmp_path):
    from hacnn.experiment import protocol_of
    root = identity_folders(tmp_path / "crops")
    data = build_dataset("folder", root, test_ids=2)
    assert protocol_of("folder", data) == "nocam"
    assert protocol_of("cuhk03-labeled", object()) == "cuhk03"


# ----------------------------------------------------------------------------- pattern, split folders

def test_pattern_layout_in_query_gallery_split_folders(tmp_path):
    root = tmp_path / "mine"
    flat(root / "train", ["7-A-1.jpg", "7-B-2.jpg", "12-A-1.jpg", "12-A-2.jpg", "3-B-1.jpg"])
    flat(root / "query", ["0-A-1.jpg", "5-B-1.jpg"])
    flat(root / "gallery", ["0-B-9.jpg", "5-A-3.jpg", "5-B-4.jpg", "40-A-1.jpg"])
    pattern = r"(?P<identity>\d+)-(?P<camera>[A-Z])-\d+\.jpg"
    data = ImageFolderReID(root, pattern=pattern)                          # layout, splits detected
    assert data.train_pid_map == {1: 0, 2: 1, 3: 2}                        # 3, 7, 12 in order
    assert data.identity_names == {0: "3", 1: "7", 2: "12"}
    assert data.camera_names == ["A", "B"]
    assert sorted((Path(p).name, data.identity_names[pid], cam) for p, pid, cam in data.train) == [
        ("12-A-1.jpg", "12", 0), ("12-A-2.jpg", "12", 0), ("3-B-1.jpg", "3", 1),
        ("7-A-1.jpg", "7", 0), ("7-B-2.jpg", "7", 1)]
    # query and gallery share a numbering: "0" -> 1, "5" -> 2, "40" -> 3
    assert data.test_identity_names == {1: "0", 2: "5", 3: "40"}
    assert sorted(who(data, data.query)) == [("0", "0-A-1.jpg", 0), ("5", "5-B-1.jpg", 1)]
    assert len(data.gallery) == 4 and data.num_unmatched_queries == 0
    assert "distractor" not in data.summary()                             # pid numbering starts at 1


def test_train_test_folders_first_camera_queries(tmp_path):
    root = tmp_path / "pairs"
    flat(root / "train", ["0000_00.jpg", "0000_05.jpg", "0001_01.jpg", "0001_07.jpg"])
    flat(root / "test", ["0000_00.jpg", "0000_03.jpg", "0000_06.jpg", "0002_04.jpg", "0002_09.jpg"])
    data = ImageFolderReID(root, pattern=r"(?P<identity>\d{4})_(?P<image>\d{2})\.jpg",
                           camera=lambda g: "1" if int(g["image"]) < 5 else "2",
                           query="first-camera")
    assert sorted(who(data, data.query)) == [("0000", "0000_00.jpg", 0), ("0000", "0000_03.jpg", 0),
                                             ("0002", "0002_04.jpg", 0)]
    assert sorted(who(data, data.gallery)) == [("0000", "0000_06.jpg", 1), ("0002", "0002_09.jpg", 1)]
    # the same name in train/ and test/ is another person: separate numberings
    assert data.identity_names == {0: "0000", 1: "0001"} and data.test_identity_names[1] == "0000"


# ----------------------------------------------------------------------------- warnings

def test_non_image_files_are_skipped_with_one_counted_warning(tmp_path):
    root = identity_folders(tmp_path / "crops")
    (root / "notes.txt").write_text("who is who")
    (root / "alice" / "alice.mp4").write_bytes(b"\x00" * 10)
    (root / "bob" / "Thumbs.db").write_bytes(b"os clutter")        # skipped silently
    (root / "bob" / ".DS_Store").write_bytes(b"os clutter")
    with pytest.warns(UserWarning, match=r"skipped 2 entries .* not images") as record:
        data = ImageFolderReID(root, pattern=CAMERA_PATTERN, test_ids=2)
    assert sum("skipped" in str(w.message) for w in record) == 1
    assert len(data.train) + len(data.query) + len(data.gallery) == sum(map(len, PEOPLE.values()))


def test_unmatched_queries_are_counted_and_kept(tmp_path):
    root = tmp_path / "mine"
    flat(root / "train", ["1-A.jpg", "1-B.jpg"])
    flat(root / "query", ["5-A.jpg", "6-A.jpg", "7-B.jpg"])
    flat(root / "gallery", ["5-B.jpg", "6-A2.jpg", "9-A.jpg"])
    pattern = r"(?P<identity>\d+)-(?P<camera>[A-Z])\d?\.jpg"
    with pytest.warns(UnmatchedQueryWarning, match=r"2 of 3 queries \(2 identities, e\.g\. '6'\)"):
        data = ImageFolderReID(root, pattern=pattern)
    assert data.num_unmatched_queries == 2 and len(data.query) == 3
    # the evaluation skips them and says so
    q = [pid for _, pid, _ in data.query]
    g = [pid for _, pid, _ in data.gallery]
    res = evaluate(np.ones((3, 3)), q, g, [c for *_, c in data.query], [c for *_, c in data.gallery])
    assert (res.num_valid_queries, res.num_skipped_queries) == (1, 2)


# ----------------------------------------------------------------------------- errors

def _case_root(tmp_path: Path) -> Path:
    return identity_folders(tmp_path / "crops")


def _bad_cases():
    pattern = r"(?P<identity>\d+)-(?P<camera>[A-Z])\.jpg"

    def empty(t):
        (t / "empty" / "alice").mkdir(parents=True)
        return lambda: ImageFolderReID(t / "empty", test_ids=1), DatasetLayoutError, \
            "no images in '" + re.escape(str(t / "empty")) + "': expected one sub-folder per identity"

    def not_an_image(t):
        root = _case_root(t)
        (root / "bob" / "c2_z.jpg").write_text("this is text")
        return lambda: ImageFolderReID(root, test_ids=2), DatasetLayoutError, \
            r"1 of 25 images .*/c2_z\.jpg' \(not a JPEG, PNG or BMP file\); remove or replace"

    def zero_bytes(t):
        root = _case_root(t)
        (root / "bob" / "c2_z.jpg").write_bytes(b"")
        return lambda: ImageFolderReID(root, test_ids=2), DatasetLayoutError, r"c2_z\.jpg' \(empty file"

    def matches_nothing(t):
        root = flat(t / "flat", ["a.jpg", "b.jpg"])
        return lambda: ImageFolderReID(root, pattern=pattern, test_ids=1), DatasetLayoutError, \
            re.escape(str(root / "a.jpg")) + ".*does not match the pattern"

    def no_identity_group(t):
        root = flat(t / "flat", ["1-A.jpg"])
        return lambda: ImageFolderReID(root, layout="pattern", pattern=r"\d+-(?P<camera>[A-Z])\.jpg"), \
            ValueError, "has no named group 'identity'"

    def bad_regex(t):
        return lambda: ImageFolderReID(t, pattern="(?P<identity>[0-9"), ValueError, \
            "not a valid regular expression"

    def identity_group_with_folders(t):
        root = _case_root(t)
        return lambda: ImageFolderReID(root, layout="identity-folders", pattern=pattern), \
            ValueError, "the folder names the identity"

    def duplicate(t):
        root = _case_root(t)
        os.symlink(root / "alice" / "c1_a.jpg", root / "alice" / "c1_copy.jpg")
        return lambda: ImageFolderReID(root, pattern=CAMERA_PATTERN, test_ids=2), DatasetLayoutError, \
            r"the same image is read twice: .*c1_a\.jpg.*c1_copy\.jpg"

    def split_partly_missing(t):
        flat(t / "s" / "train", ["1-A.jpg"])
        flat(t / "s" / "query", ["2-A.jpg"])
        return lambda: ImageFolderReID(t / "s", pattern=pattern), DatasetLayoutError, \
            re.escape(str(t / "s")) + r".*incomplete: found train/, query/, missing gallery/"

    def test_and_query(t):
        for d in ("train", "query", "test"):
            flat(t / "s" / d, ["1-A.jpg"])
        return lambda: ImageFolderReID(t / "s", pattern=pattern), DatasetLayoutError, \
            "both test/ and query/ or gallery/"

    def no_query_matches(t):
        flat(t / "s" / "train", ["1-A.jpg", "1-B.jpg"])
        flat(t / "s" / "query", ["2-A.jpg", "3-A.jpg"])
        flat(t / "s" / "gallery", ["2-A.jpg", "4-B.jpg"])
        return lambda: ImageFolderReID(t / "s", pattern=pattern), DatasetLayoutError, \
            r"2 of 2 queries .* no true match \(another camera's image.*nothing to evaluate"

    def loose_images(t):
        root = flat(t / "flat", ["1-A.jpg"])
        return lambda: ImageFolderReID(root, test_ids=1), DatasetLayoutError, \
            r"1-A\.jpg' lies directly in .*identity folders expect <identity>/<image>"

    def mixed_cameras(t):
        root = flat(t / "flat", ["1-A.jpg", "1.jpg", "2-B.jpg", "2-A.jpg"])
        return lambda: ImageFolderReID(root, pattern=r"(?P<identity>\d+)(-(?P<camera>[A-Z]))?\.jpg",
                                       test_ids=1), DatasetLayoutError, r"1\.jpg' has no camera"

    def bad_test_ids(t):
        root = _case_root(t)
        return lambda: ImageFolderReID(root, test_ids=6), ValueError, \
            r"a count in 1\.\.5 of the 6 identities, got 6"

    def first_camera_without_cameras(t):
        flat(t / "s" / "train", ["1.jpg"])
        flat(t / "s" / "test", ["2.jpg", "2b.jpg"])
        return lambda: ImageFolderReID(t / "s", pattern=r"(?P<identity>\d+)b?\.jpg",
                                       query="first-camera"), ValueError, "at least two cameras"

    def missing_root(t):
        return lambda: ImageFolderReID(t / "nowhere"), DatasetLayoutError, \
            re.escape(str(t / "nowhere")) + "' is not a folder"

    return [empty, not_an_image, zero_bytes, matches_nothing, no_identity_group, bad_regex,
            identity_group_with_folders, duplicate, split_partly_missing, test_and_query,
            no_query_matches, loose_images, mixed_cameras, bad_test_ids,
            first_camera_without_cameras, missing_root]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c.__name__)
def test_bad_input_is_one_clear_error_and_writes_nothing(case, tmp_path):
    action, error, message = case(tmp_path)
    before = tree(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error, match=message):
            action()
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------- CLI

def test_cli_folder_flags_reach_the_reader(tmp_path):
    from hacnn.__main__ import _dataset_options, build_parser
    from hacnn.experiment import load_dataset
    root = identity_folders(tmp_path / "crops")
    args = build_parser().parse_args(["train", "--dataset", "folder", "--root", str(root),
                                      "--pattern", CAMERA_PATTERN, "--test-ids", "0.3",
                                      "--split-seed", "4"])
    options = _dataset_options(args)
    assert options == {"pattern": CAMERA_PATTERN, "test_ids": 0.3, "split_seed": 4}
    data = load_dataset("folder", root, **options)
    direct = ImageFolderReID(root, pattern=CAMERA_PATTERN, test_ids=0.3, split_seed=4)
    assert data.query == direct.query and data.train == direct.train
    count = build_parser().parse_args(["train", "--dataset", "folder", "--test-ids", "2"])
    assert _dataset_options(count) == {"test_ids": 2}
    wrong = build_parser().parse_args(["train", "--dataset", "market1501", "--pattern", "x"])
    with pytest.raises(ValueError, match="--pattern describe your own folder"):
        _dataset_options(wrong)


@pytest.mark.slow
def test_cli_trains_on_a_folder_and_evaluates_with_the_saved_options(tmp_path, capsys, one_thread):
    import json
    from hacnn.__main__ import main
    from hacnn.experiment import run_experiment
    people = {f"p{k}": [f"c{1 + j % 2}_{j}.jpg" for j in range(4)] for k in range(8)}
    root = identity_folders(tmp_path / "crops", people)
    tiny = {"channels": (32, 64, 96), "feat_dim": 16, "input_size": (32, 16),
            "local_sizes": ((8, 8), (4, 4), (2, 2))}
    options = {"pattern": CAMERA_PATTERN, "test_ids": 3}
    run = run_experiment("folder", tmp_path / "run", root=root, dataset_options=options, epochs=1,
                         eval_every=1, batch_size=8, num_instances=2, model=tiny, workers=0,
                         progress=False, verbose=False)
    assert run.trainer.model.config.num_classes == 5
    assert json.loads((tmp_path / "run" / "run.json").read_text())["dataset_options"] == options
    assert main(["evaluate", "--weights", str(tmp_path / "run" / "best.pth"), "--workers", "0",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "on folder" in out and "(6 queries; 0 without a match skipped)" in out


# ----------------------------------------------------------------------------- CUHK03 camera pair 1

@pytest.fixture
def cuhk03_pair1(shared_data) -> Path:
    if not (shared_data / "cuhk03_pair1").is_dir():
        pytest.skip("cuhk03_pair1 not in the shared data")
    return shared_data / "cuhk03_pair1"


def test_cuhk03_pair1_real_folder_matches_its_readme(cuhk03_pair1, recwarn):
    data = build_dataset("cuhk03-pair", cuhk03_pair1.parent, strict=True)   # found by name
    assert isinstance(data, CUHK03Pair) and data.dataset_dir == cuhk03_pair1
    assert data.label == "CUHK03 camera pair 1, detected, 743/100"
    counts = data.counts()
    assert (counts["train_ids"], counts["train_images"]) == (743, 7_239)
    assert (counts["query_ids"], counts["gallery_ids"], counts["cameras"]) == (100, 100, 2)
    # the test folder split by camera: image index 00-04 queries, 05-09 gallery
    test_names = sorted(os.listdir(cuhk03_pair1 / "test"))
    first = [n for n in test_names if int(n[5:7]) < 5]
    assert len(test_names) == 938
    assert sorted(Path(p).name for p, _, _ in data.query) == first
    assert len(data.gallery) == 938 - len(first)
    assert {cam for _, _, cam in data.query} == {0} and {cam for _, _, cam in data.gallery} == {1}
    assert data.protocol == "market" and data.num_unmatched_queries == 0
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
