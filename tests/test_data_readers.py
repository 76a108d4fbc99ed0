"""Benchmark readers on fake trees in the real layouts, and on real Market-1501 crops."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import (CUHK03_NP_SPEC, CUHK03_TEST_PIDS, cuhk03_box, cuhk03_files,
                      make_cuhk03, make_cuhk03_np, make_dukemtmcreid, make_market1501,
                      market_name, write_cuhk03_config, write_image)
from hacnn.data import (CUHK03, DATASETS, DatasetCountError, DatasetCountWarning,
                        DatasetLayoutError, DukeMTMCreID, Market1501, build_dataset)

pytestmark = pytest.mark.filterwarnings("ignore::hacnn.data.base.DatasetCountWarning")


def names(items):
    return [Path(path).name for path, _, _ in items]


def pids(items):
    return [pid for _, pid, _ in items]


def cams(items):
    return [cam for _, _, cam in items]


# --- Market-1501 --------------------------------------------------------------

@pytest.fixture(scope="module")
def market_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("market")
    make_market1501(root)
    return root


def test_market_ids_cameras_and_relabelling(market_root):
    data = Market1501(market_root)
    # sorted by name; ids 2, 7, 10 -> 0, 1, 2; junk (-1) and distractor (0) left out
    assert names(data.train) == [
        "0002_c1s1_000100_01.jpg", "0002_c1s1_000101_01.jpg", "0002_c3s1_000102_01.jpg",
        "0007_c2s1_000103_01.jpg", "0007_c2s1_000104_01.jpg",
        "0010_c4s1_000106_01.jpg", "0010_c6s1_000105_01.jpg"]
    assert pids(data.train) == [0, 0, 0, 1, 1, 2, 2]
    assert cams(data.train) == [0, 0, 2, 1, 1, 3, 5]
    assert data.train_pid_map == {2: 0, 7: 1, 10: 2}
    assert (data.num_train_pids, data.num_train_cams) == (3, 5)
    assert all(Path(p).parent.name == "bounding_box_train" for p, _, _ in data.train)
    # query and gallery keep the original ids; the gallery keeps junk and distractors
    assert list(zip(pids(data.query), cams(data.query))) == [(1, 0), (1, 1), (3, 0), (5, 3)]
    assert sorted(pids(data.gallery)) == [-1, -1, 0, 0, 1, 1, 1, 3, 5]
    assert names(data.gallery)[:2] == ["-1_c1s1_000120_01.jpg", "-1_c1s1_000121_01.jpg"]
    assert data.counts() == {"train_ids": 3, "train_images": 7, "query_ids": 3,
                             "query_images": 4, "gallery_ids": 4, "gallery_images": 7,
                             "cameras": 6}


def test_market_summary_table(market_root):
    text = repr(Market1501(market_root))
    assert text.splitlines()[0] == "Market1501"
    assert "  train    |     3 |        7 |         5" in text
    assert "  gallery  |     5 |        9 |         4" in text
    assert "2 distractor (0) and 2 junk (-1) images" in text
    assert str(market_root) not in text  # no machine-dependent paths


@pytest.mark.parametrize("subdir", ["Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15",
                                    "market1501", "", "copies/my-market-copy"])
def test_market_found_where_users_keep_it(tmp_path, subdir):
    dataset_dir = make_market1501(tmp_path, subdir=subdir)
    data = Market1501(tmp_path)
    assert data.dataset_dir == dataset_dir
    assert len(data.train) == 7


def test_market_root_from_environment(market_root, monkeypatch):
    monkeypatch.setenv("HACNN_DATA", str(market_root))
    assert len(Market1501().query) == 4
    assert len(build_dataset("market1501").gallery) == 9
    monkeypatch.delenv("HACNN_DATA")
    with pytest.raises(DatasetLayoutError, match="HACNN_DATA"):
        Market1501()


def test_market_count_check_warns_or_raises(market_root):
    with pytest.warns(DatasetCountWarning, match=r"train_ids: expected 751, found 3"):
        Market1501(market_root)
    with pytest.raises(DatasetCountError, match=r"gallery_images: expected 15,913, found 7"):
        Market1501(market_root, strict=True)


def test_subclass_without_official_counts_is_not_checked(market_root, recwarn):
    class Unofficial(Market1501):  # how the synthetic benchmark declares itself
        official_counts = None
    data = Unofficial(market_root, strict=True)
    assert len(data.train) == 7
    assert not [w for w in recwarn if issubclass(w.category, DatasetCountWarning)]


def test_market_multi_query_reads_gt_bbox_groups(market_root):
    data = Market1501(market_root, multi_query=True)
    # every gt_bbox box of a query's (id, camera); not id 2 (train) nor camera 5
    assert list(zip(pids(data.query), cams(data.query))) == [
        (1, 0), (1, 0), (1, 0), (1, 1), (1, 1), (3, 0), (3, 0), (5, 3)]
    assert all(Path(p).parent.name == "gt_bbox" for p, _, _ in data.query)
    assert len(data.gallery) == 9
    assert "query_images" not in data.expected_counts


def test_market_multi_query_group_without_box_falls_back(tmp_path):
    dataset_dir = make_market1501(tmp_path)
    for path in (dataset_dir / "gt_bbox").glob("0005_*"):
        path.unlink()
    with pytest.warns(DatasetCountWarning, match="no box for 1 of the 4"):
        data = Market1501(tmp_path, multi_query=True)
    assert (names(data.query)[-1], pids(data.query)[-1]) == ("0005_c4s1_000112_01.jpg", 5)
    with pytest.raises(DatasetCountError):
        Market1501(tmp_path, multi_query=True, strict=True)


def test_market_missing_folder_names_path_and_expectation(tmp_path):
    dataset_dir = make_market1501(tmp_path)
    shutil.rmtree(dataset_dir / "query")
    with pytest.raises(DatasetLayoutError, match=r"incomplete: missing query") as err:
        Market1501(tmp_path)
    assert str(dataset_dir) in str(err.value)
    shutil.rmtree(dataset_dir / "gt_bbox")
    (dataset_dir / "query").mkdir()
    with pytest.raises(DatasetLayoutError, match="missing gt_bbox"):
        Market1501(tmp_path, multi_query=True)


def test_nothing_found_lists_the_places_tried(tmp_path):
    with pytest.raises(DatasetLayoutError, match="Market-1501 not found") as err:
        Market1501(tmp_path)
    assert str(tmp_path / "Market-1501-v15.09.15") in str(err.value)
    with pytest.raises(DatasetLayoutError, match="not a folder"):
        Market1501(tmp_path / "nowhere")


def test_market_unparsable_jpg_is_an_error(tmp_path):
    dataset_dir = make_market1501(tmp_path)
    write_image(dataset_dir / "bounding_box_test" / "0001_c1_000100.jpg")
    with pytest.raises(DatasetLayoutError, match=r"0001_c1_000100\.jpg.*PPPP_cCsS_FFFFFF_NN\.jpg"):
        Market1501(tmp_path)


def test_market_stray_files_are_ignored(tmp_path):
    dataset_dir = make_market1501(tmp_path)
    for folder in ("bounding_box_train", "query"):
        assert (dataset_dir / folder / "Thumbs.db").exists()
        (dataset_dir / folder / "._0002_c1s1_000100_01.jpg").write_bytes(b"\x00\x05\x16\x07")
    (dataset_dir / "query" / "notes").mkdir()
    assert len(Market1501(tmp_path).train) == 7


def test_market_camera_outside_range_is_an_error(tmp_path):
    dataset_dir = make_market1501(tmp_path)
    write_image(dataset_dir / "query" / market_name(9, 7, 1))
    with pytest.raises(DatasetLayoutError, match=r"0009_c7s1.*camera 7 outside 1\.\.6"):
        Market1501(tmp_path)


def test_market_empty_split_is_an_error(tmp_path):
    dataset_dir = make_market1501(tmp_path)
    for path in (dataset_dir / "query").glob("*.jpg"):
        path.unlink()
    with pytest.raises(DatasetLayoutError, match="the query split is empty"):
        Market1501(tmp_path)


def test_ambiguous_candidates_ask_for_the_folder(tmp_path):
    make_market1501(tmp_path, subdir="market_a")
    make_market1501(tmp_path, subdir="market_b")
    with pytest.raises(DatasetLayoutError, match="several candidate folders"):
        Market1501(tmp_path)
    assert len(Market1501(tmp_path / "market_b").train) == 7


# --- DukeMTMC-reID ------------------------------------------------------------

def test_duke_ids_cameras_and_relabelling(tmp_path):
    make_dukemtmcreid(tmp_path, subdir="dukemtmc-reid/DukeMTMC-reID")
    data = DukeMTMCreID(tmp_path)
    assert names(data.train) == ["0005_c2_f0000100.jpg", "0005_c7_f0000101.jpg",
                                 "0012_c8_f0000102.jpg", "0012_c8_f0000103.jpg",
                                 "0040_c1_f0000104.jpg"]
    assert pids(data.train) == [0, 0, 1, 1, 2]
    assert cams(data.train) == [1, 6, 7, 7, 0]
    assert list(zip(pids(data.query), cams(data.query))) == [(8, 0), (9, 4)]
    assert pids(data.gallery) == [8, 9, 9, 3000]
    assert data.counts()["cameras"] == 7
    assert build_dataset("dukemtmcreid", tmp_path).num_train_pids == 3


def test_duke_rejects_market_names(tmp_path):
    dataset_dir = make_dukemtmcreid(tmp_path)
    write_image(dataset_dir / "query" / market_name(8, 1, 5))
    with pytest.raises(DatasetLayoutError, match=r"PPPP_cC_fFFFFFFF\.jpg"):
        DukeMTMCreID(tmp_path)


# --- CUHK03 -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["labeled", "detected"])
def test_cuhk03_np_release(tmp_path, kind):
    make_cuhk03_np(tmp_path)
    data = CUHK03(tmp_path, labeled=kind == "labeled")
    spec = CUHK03_NP_SPEC[kind]
    assert data.source == "np-release"
    assert data.dataset_dir == tmp_path / "cuhk03-np" / kind
    assert pids(data.train) == [{1: 0, 4: 1}[pid] for pid, _ in spec["bounding_box_train"]]
    assert cams(data.train) == [cam - 1 for _, cam in spec["bounding_box_train"]]
    assert list(zip(pids(data.query), cams(data.query))) == [
        (pid, cam - 1) for pid, cam in spec["query"]]
    assert pids(data.gallery) == [pid for pid, _ in spec["bounding_box_test"]]


def test_cuhk03_np_release_when_root_is_the_release(tmp_path):
    make_cuhk03_np(tmp_path)
    assert len(CUHK03(tmp_path / "cuhk03-np", labeled=False).train) == 3
    assert len(build_dataset("cuhk03-labeled", tmp_path / "cuhk03-np" / "labeled").train) == 5


@pytest.fixture(scope="module")
def cuhk03_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cuhk03")
    make_cuhk03(root)
    return root


@pytest.mark.parametrize("kind", ["labeled", "detected"])
def test_cuhk03_new_protocol_from_config_extracts_images(cuhk03_root, kind):
    data = CUHK03(cuhk03_root, labeled=kind == "labeled")
    assert data.source == "protocol-mat"
    images = cuhk03_root / "cuhk03" / f"images_{kind}"
    files = cuhk03_files(kind)
    assert sorted(os.listdir(images)) == sorted(name for name, _, _ in files)
    train_pids = sorted({pid for _, pid, _ in files} - set(CUHK03_TEST_PIDS))
    assert data.train_pid_map == {pid: i for i, pid in enumerate(train_pids)}  # 1, 2, 5
    assert len(data.train) == sum(pid in train_pids for _, pid, _ in files)
    # the first box of each test id per view is a query; views are the cameras
    assert list(zip(pids(data.query), cams(data.query))) == [
        (3, 0), (3, 1), (4, 0), (4, 1), (6, 0), (6, 1)]
    assert names(data.query)[:2] == ["1_003_1_01.png", "1_003_2_06.png"]
    assert set(names(data.gallery)).isdisjoint(names(data.query))
    assert set(pids(data.gallery)) == set(CUHK03_TEST_PIDS)
    # pixels come from the right cell (HDF5 holds images transposed)
    pixels = np.asarray(Image.open(images / "1_002_2_07.png"))
    np.testing.assert_array_equal(pixels, cuhk03_box(kind, 1, 2, 6))


def test_cuhk03_detected_skips_empty_cells(cuhk03_root):
    detected = CUHK03(cuhk03_root, labeled=False)
    labeled = CUHK03(cuhk03_root, labeled=True)
    assert len(labeled.train) - len(detected.train) == 1
    assert "1_002_1_02.png" in names(labeled.train)
    assert "1_002_1_02.png" not in names(detected.train)


def test_cuhk03_extraction_never_overwrites(tmp_path):
    dataset_dir = make_cuhk03(tmp_path)
    images = dataset_dir / "images_labeled"
    mine = write_image(images / "1_001_1_01.png", color=(1, 2, 3))
    before = mine.read_bytes()
    CUHK03(tmp_path)
    assert mine.read_bytes() == before
    assert not [n for n in os.listdir(images) if n.startswith(".")]  # no leftovers
    stamp = os.stat(images / "2_002_2_07.png").st_mtime_ns
    CUHK03(tmp_path)  # second use reads the cache
    assert os.stat(images / "2_002_2_07.png").st_mtime_ns == stamp


def test_cuhk03_extracted_images_without_raw_mat(tmp_path):
    dataset_dir = make_cuhk03(tmp_path)
    CUHK03(tmp_path, labeled=True)  # extract once
    (dataset_dir / "cuhk03_release" / "cuhk-03.mat").unlink()
    assert len(CUHK03(tmp_path, labeled=True).gallery) == 6
    with pytest.raises(DatasetLayoutError, match="cuhk-03.mat.*not found"):
        CUHK03(tmp_path, labeled=False)  # detected images were never extracted


def test_cuhk03_config_without_a_field_is_an_error(tmp_path):
    from scipy.io import loadmat, savemat
    path = make_cuhk03(tmp_path, raw=False) / "cuhk03_new_protocol_config_labeled.mat"
    config = {k: v for k, v in loadmat(path).items()
              if not k.startswith("__") and k != "query_idx"}
    savemat(path, config)
    with pytest.raises(DatasetLayoutError, match="lacks the field.*query_idx"):
        CUHK03(tmp_path)


def test_cuhk03_missing_everything_names_both_layouts(tmp_path):
    with pytest.raises(DatasetLayoutError,
                       match=r"cuhk03-np/detected/.*cuhk03_new_protocol_config_detected\.mat"):
        CUHK03(tmp_path, labeled=False)


def test_cuhk03_new_protocol_counts(cuhk03_root):
    assert CUHK03(cuhk03_root).expected_counts["train_images"] == 7_368
    assert CUHK03(cuhk03_root, labeled=False).expected_counts["gallery_images"] == 5_332
    with pytest.raises(DatasetCountError, match="train_ids: expected 767, found 3"):
        CUHK03(cuhk03_root, strict=True)


@pytest.mark.parametrize(("split_id", "test_pids", "train_pids"),
                         [(0, [3, 5], [1, 2, 4, 6]), (1, [1, 2], [3, 4, 5, 6])])
def test_cuhk03_classic_splits(cuhk03_root, split_id, test_pids, train_pids):
    data = CUHK03(cuhk03_root, labeled=True, split="classic", split_id=split_id)
    assert data.source == "classic-mat"
    assert sorted(set(pids(data.query))) == test_pids
    assert data.query == data.gallery  # every test image, matched across views
    assert data.train_pid_map == {pid: i for i, pid in enumerate(train_pids)}
    assert set(cams(data.train)) == {0, 1}
    assert data.expected_counts["train_ids"] == 1_367


def test_cuhk03_argument_errors(cuhk03_root):
    with pytest.raises(ValueError, match="split_id must be in 0..1"):
        CUHK03(cuhk03_root, split="classic", split_id=2)
    with pytest.raises(ValueError, match="single split"):
        CUHK03(cuhk03_root, split_id=1)
    with pytest.raises(ValueError, match="'new' or 'classic'"):
        CUHK03(cuhk03_root, split="old")


def test_cuhk03_config_in_release_folder(tmp_path):
    """Config files beside cuhk-03.mat in cuhk03_release/ work too."""
    dataset_dir = make_cuhk03(tmp_path, configs=())
    write_cuhk03_config(dataset_dir / "cuhk03_release" / "cuhk03_new_protocol_config_labeled.mat",
                        "labeled")
    data = CUHK03(tmp_path)
    assert Path(data.train[0][0]).parent == dataset_dir / "images_labeled"


# --- registry -----------------------------------------------------------------

def test_registry_names():
    assert set(DATASETS) == {"synthetic", "market1501", "dukemtmcreid", "cuhk03-labeled",
                             "cuhk03-detected", "cuhk03-pair", "msmt17", "folder"}
    with pytest.raises(KeyError, match="unknown dataset 'viper'"):
        build_dataset("viper", ".")


# --- real Market-1501 crops ---------------------------------------------------

def test_mini_market1501_real_images(shared_data):
    with pytest.warns(DatasetCountWarning, match="Market1501 split sizes differ"):
        data = Market1501(shared_data)  # found by name under the shared data root
    assert data.dataset_dir.name == "mini_market1501"
    assert (len(data.train), len(data.query), len(data.gallery)) == (32, 32, 32)
    assert data.num_train_pids == 16
    assert sorted(set(pids(data.train))) == list(range(16))
    assert sorted(data.train_pid_map)[:3] == [2, 7, 10]
    assert {cam for _, _, cam in data.train + data.query + data.gallery} <= set(range(6))
    gallery = {(pid, cam) for _, pid, cam in data.gallery}
    cross_camera = [any(p == pid and c != cam for p, c in gallery) for _, pid, cam in data.query]
    assert sum(cross_camera) == 30  # as the folder's README says
    with Image.open(data.query[0][0]) as image:
        assert image.mode == "RGB" and image.size[0] < image.size[1]
