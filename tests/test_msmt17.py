"""MSMT17 reader on fake releases in both real layouts (V1 and V2 folder names)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from fixtures import MSMT17_SPEC, make_msmt17, msmt17_name, write_image
from hacnn.data import (MSMT17, DatasetCountError, DatasetCountWarning, DatasetLayoutError,
                        build_dataset)

pytestmark = pytest.mark.filterwarnings("ignore::hacnn.data.base.DatasetCountWarning")


def ids(items):
    return [(pid, cam) for _, pid, cam in items]


@pytest.mark.parametrize(("version", "train_dir", "test_dir"), [
    ("MSMT17_V1", "train", "test"), ("MSMT17_V2", "mask_train_v2", "mask_test_v2")])
def test_both_releases_pids_cameras_and_folders(tmp_path, version, train_dir, test_dir):
    dataset_dir = make_msmt17(tmp_path, version)
    data = MSMT17(tmp_path)
    assert (data.version, data.dataset_dir) == (version, dataset_dir)
    # list_train.txt only (default): ids 0, 2, 7 -> 0, 1, 2; cameras 1-based in the names
    assert data.train_pid_map == {0: 0, 2: 1, 7: 2}
    assert ids(data.train) == [
        (0, 0), (0, 2), (1, 14), (1, 14), (2, 3)]
    assert all(Path(p).parent.parent == dataset_dir / train_dir for p, _, _ in data.train)
    # query and gallery keep the lists' pids (pid 0 is a person here)
    assert ids(data.query) == [(0, 0), (3, 1)]
    assert ids(data.gallery) == [(0, 4), (3, 1), (3, 11), (11, 0)]
    assert all(Path(p).parent.parent == dataset_dir / test_dir for p, _, _ in data.query + data.gallery)
    assert data.counts() == {"train_ids": 3, "train_images": 5, "query_ids": 2, "query_images": 2,
                             "gallery_ids": 3, "gallery_images": 4, "cameras": 7}
    assert "distractor" not in data.summary()


def test_merge_val_adds_list_val(tmp_path):
    make_msmt17(tmp_path)
    data = MSMT17(tmp_path, merge_val=True)
    assert data.train_pid_map == {0: 0, 2: 1, 5: 2, 7: 3}
    assert len(data.train) == len(MSMT17_SPEC["list_train.txt"]) + len(MSMT17_SPEC["list_val.txt"])
    assert sorted(ids(data.train)) == sorted([(0, 0), (0, 2), (1, 14), (1, 14), (3, 3),
                                              (0, 1), (2, 8)])
    assert build_dataset("msmt17", tmp_path, merge_val=True).train == data.train


def test_published_counts_checked_only_where_they_apply(tmp_path):
    make_msmt17(tmp_path)
    with pytest.warns(DatasetCountWarning, match="query_images: expected 11,659, found 2"):
        default = MSMT17(tmp_path)
    assert not {"train_ids", "train_images"} & set(default.expected_counts)  # list_train alone
    assert MSMT17(tmp_path, merge_val=True).expected_counts["train_images"] == 32_621
    with pytest.raises(DatasetCountError, match="train_ids: expected 1,041, found 4"):
        MSMT17(tmp_path, merge_val=True, strict=True)
    with pytest.raises(DatasetCountError, match="cameras: expected 15, found 7"):
        MSMT17(tmp_path, strict=True)


@pytest.mark.parametrize("subdir", ["", "msmt17", "MSMT17"])
def test_found_where_users_keep_it(tmp_path, subdir):
    dataset_dir = make_msmt17(tmp_path / subdir if subdir else tmp_path)
    assert MSMT17(tmp_path).dataset_dir == dataset_dir
    assert MSMT17(dataset_dir).dataset_dir == dataset_dir


def test_missing_list_names_what_was_expected(tmp_path):
    dataset_dir = make_msmt17(tmp_path, "MSMT17_V2")
    (dataset_dir / "list_val.txt").unlink()
    with pytest.raises(DatasetLayoutError, match=r"V2 layout.*incomplete: missing list_val\.txt"):
        MSMT17(tmp_path)


def test_nothing_found_names_both_layouts(tmp_path):
    with pytest.raises(DatasetLayoutError, match=re.escape(
            "MSMT17_V1/{train/, test/}; MSMT17_V2/{mask_train_v2/, mask_test_v2/}")):
        MSMT17(tmp_path)


@pytest.mark.parametrize(("line", "message"), [
    ("0000/0000_000_01_0303morning_0015_0.jpg", r"line 3: expected '<relative path> <pid>'"),
    ("0000/0000_000_01_0303morning_0015_0.jpg zero", r"line 3: expected '<relative path> <pid>'"),
    ("0000/img_0015.jpg 0", r"line 3: unexpected file name '0000/img_0015\.jpg': expected PPPP_SSS_CC"),
    ("0000/0000_000_01_0303morning_9999_0.jpg 0", r"1 images listed in .*list_query\.txt' are missing"),
])
def test_bad_list_lines_are_one_clear_error(tmp_path, line, message):
    dataset_dir = make_msmt17(tmp_path)
    with open(dataset_dir / "list_query.txt", "a") as fh:
        fh.write(line + "\n")
    with pytest.raises(DatasetLayoutError, match=message) as err:
        MSMT17(tmp_path)
    assert str(dataset_dir / "list_query.txt") in str(err.value) or "missing" in message


def test_camera_outside_1_to_15_is_an_error(tmp_path):
    dataset_dir = make_msmt17(tmp_path)
    rel = msmt17_name(3, 16, 1)
    write_image(dataset_dir / "test" / rel)
    with open(dataset_dir / "list_gallery.txt", "a") as fh:
        fh.write(f"{rel} 3\n")
    with pytest.raises(DatasetLayoutError, match=r"_16_0303morning.*camera 16 outside 1\.\.15"):
        MSMT17(tmp_path)


def test_the_same_image_listed_twice_is_an_error(tmp_path):
    dataset_dir = make_msmt17(tmp_path)
    first = (dataset_dir / "list_query.txt").read_text().splitlines()[0]
    with open(dataset_dir / "list_gallery.txt", "a") as fh:
        fh.write(first + "\n")
    twice = r"read twice: .*\(list_query\.txt\) .*\(list_gallery\.txt\)"
    with pytest.raises(DatasetLayoutError, match=twice):
        MSMT17(tmp_path)


def test_empty_split_is_an_error(tmp_path):
    dataset_dir = make_msmt17(tmp_path)
    (dataset_dir / "list_query.txt").write_text("\n")
    with pytest.raises(DatasetLayoutError, match="the query split is empty"):
        MSMT17(tmp_path)
    shutil.rmtree(dataset_dir / "test")
    with pytest.raises(DatasetLayoutError, match="incomplete: missing test"):
        MSMT17(tmp_path)


def test_cli_merge_val_flag(tmp_path):
    from hacnn.__main__ import _dataset_options, build_parser
    args = build_parser().parse_args(["train", "--dataset", "msmt17", "--merge-val"])
    assert _dataset_options(args) == {"merge_val": True}
    assert _dataset_options(build_parser().parse_args(["train", "--dataset", "msmt17"])) == {}
    wrong = build_parser().parse_args(["train", "--dataset", "market1501", "--merge-val"])
    with pytest.raises(ValueError, match="--merge-val applies to --dataset msmt17"):
        _dataset_options(wrong)
