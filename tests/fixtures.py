"""Small fake re-id benchmarks in the real layouts and file-name schemes.

Each ``make_*`` writes a tree of tiny solid-colour images (16x8 JPEG/PNG)
under a folder and returns the dataset folder; the ``*_SPEC`` constants say
what is in it, so tests can state the expected ids by hand. Reusable by any
test: ``from fixtures import make_market1501``.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import h5py
import numpy as np
from PIL import Image
from scipy.io import savemat

IMAGE_SIZE = (8, 16)  # PIL (width, height): a 16x8 crop
STRAY_FILES = ("Thumbs.db", ".DS_Store", "readme.txt")

# folder -> [(pid, camera)]; Market-1501 ids: -1 junk, 0 distractor.
MARKET_SPEC: dict[str, list[tuple[int, int]]] = {
    "bounding_box_train": [(2, 1), (2, 1), (2, 3), (7, 2), (7, 2), (10, 6), (10, 4),
                           (0, 1), (-1, 2)],  # junk and distractor: left out of train
    "query": [(1, 1), (1, 2), (3, 1), (5, 4)],
    "bounding_box_test": [(1, 3), (1, 3), (1, 2), (3, 2), (5, 1), (0, 2), (0, 5),
                          (-1, 1), (-1, 1)],
    "gt_bbox": [(1, 1), (1, 1), (1, 1), (1, 2), (1, 2), (3, 1), (3, 1), (5, 4),
                (2, 1), (1, 5)],  # (2, 1) and (1, 5) are no query group
}
DUKE_SPEC: dict[str, list[tuple[int, int]]] = {
    "bounding_box_train": [(5, 2), (5, 7), (12, 8), (12, 8), (40, 1)],
    "query": [(8, 1), (9, 5)],
    "bounding_box_test": [(8, 3), (9, 6), (9, 6), (3000, 2)],  # 3000: seen by one camera
}
# CUHK03-NP release: kind -> folder -> [(pid, camera)].
CUHK03_NP_SPEC: dict[str, dict[str, list[tuple[int, int]]]] = {
    "labeled": {"bounding_box_train": [(1, 1), (1, 2), (4, 1), (4, 2), (4, 2)],
                "query": [(2, 1), (2, 2)],
                "bounding_box_test": [(2, 1), (2, 2), (2, 2)]},
    "detected": {"bounding_box_train": [(1, 1), (4, 2), (4, 2)],
                 "query": [(2, 1), (3, 2)],
                 "bounding_box_test": [(2, 2), (3, 1)]},
}
# cuhk-03.mat: persons per camera pair, and (kind, pair, person, image) cells
# left empty (1-based pair/person, 0-based image; images 0-4 view 1, 5-9 view 2).
CUHK03_PERSONS = (4, 2)  # pids 1-4 (pair 1) and 5-6 (pair 2)
CUHK03_IMAGES = (0, 1, 5, 6)  # the cells that hold a box; the others are empty
CUHK03_EMPTY = {("detected", 1, 2, 1)}  # one detection missing
CUHK03_TESTSETS = (((1, 3), (2, 1)), ((1, 1), (1, 2)))  # two classic splits
CUHK03_TEST_PIDS = (3, 4, 6)  # the new protocol's test ids; 1, 2, 5 train


def write_image(path: Path, color: tuple[int, int, int] = (120, 80, 40),
                size: tuple[int, int] = IMAGE_SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _color(seed: int) -> tuple[int, int, int]:
    return ((37 * seed) % 256, (91 * seed) % 256, (53 * seed) % 256)


def _write_stray(folder: Path) -> None:
    for name in STRAY_FILES:
        (folder / name).write_bytes(b"not an image")


def market_name(pid: int, cam: int, frame: int, box: int = 1) -> str:
    head = "-1" if pid == -1 else f"{pid:04d}"
    return f"{head}_c{cam}s1_{frame:06d}_{box:02d}.jpg"


def duke_name(pid: int, cam: int, frame: int) -> str:
    return f"{pid:04d}_c{cam}_f{frame:07d}.jpg"


def _write_spec(dataset_dir: Path, spec: dict[str, list[tuple[int, int]]], namer) -> Path:
    frames = itertools.count(100)
    for folder, entries in spec.items():
        (dataset_dir / folder).mkdir(parents=True, exist_ok=True)
        _write_stray(dataset_dir / folder)
        for pid, cam in entries:
            frame = next(frames)
            write_image(dataset_dir / folder / namer(pid, cam, frame), _color(frame))
    return dataset_dir


def make_market1501(root: Path, subdir: str = "Market-1501-v15.09.15",
                    spec: dict[str, list[tuple[int, int]]] = MARKET_SPEC) -> Path:
    """Market-1501 tree under ``root/subdir`` (``""``: root itself) from ``spec``."""
    dataset_dir = _write_spec(root / subdir, spec, market_name)
    (dataset_dir / "readme.txt").write_text("Market-1501 (fake)\n")
    return dataset_dir


def make_dukemtmcreid(root: Path, subdir: str = "DukeMTMC-reID",
                      spec: dict[str, list[tuple[int, int]]] = DUKE_SPEC) -> Path:
    """DukeMTMC-reID tree under ``root/subdir`` from ``spec``."""
    return _write_spec(root / subdir, spec, duke_name)


def make_cuhk03_np(root: Path, subdir: str = "cuhk03-np",
                   spec: dict[str, dict[str, list[tuple[int, int]]]] = CUHK03_NP_SPEC) -> Path:
    """The CUHK03-NP release: ``root/subdir/{labeled,detected}/...`` (PNG)."""
    for kind, folders in spec.items():
        counters: dict[tuple[int, int], itertools.count] = {}
        def namer(pid: int, cam: int, _frame: int) -> str:
            index = next(counters.setdefault((pid, cam), itertools.count(1)))
            return f"{pid:04d}_c{cam}_{index}.png"
        _write_spec(root / subdir / kind, folders, namer)
    return root / subdir


def cuhk03_box(kind: str, pair: int, person: int, image: int) -> np.ndarray | None:
    """The (16, 8, 3) uint8 box of a cell of the fake ``cuhk-03.mat``, or None."""
    if image not in CUHK03_IMAGES or (kind, pair, person, image) in CUHK03_EMPTY:
        return None
    value = (pair * 50 + person * 20 + image * 3 + (kind == "detected") * 7) % 256
    return np.full((16, 8, 3), value, dtype=np.uint8)


def cuhk03_name(pair: int, person: int, image: int) -> str:
    return f"{pair}_{person:03d}_{1 if image < 5 else 2}_{image + 1:02d}.png"


def _matlab_attrs(dataset, matlab_class: str, empty: bool = False) -> None:
    dataset.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    if empty:
        dataset.attrs["MATLAB_empty"] = np.uint8(1)


def write_cuhk03_raw_mat(path: Path, kinds: tuple[str, ...] = ("labeled", "detected")) -> Path:
    """``cuhk-03.mat`` in MATLAB v7.3 (HDF5) layout, with object references.

    MATLAB stores arrays column-major, so HDF5 sees them transposed: a 5x1
    cell is (1, 5), an M x 10 cell (10, M), an H x W x 3 image (3, W, H).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    names = (f"r{i}" for i in itertools.count())
    with h5py.File(path, "w", userblock_size=512) as mat:
        refs = mat.create_group("#refs#")

        def put(data: np.ndarray, matlab_class: str, empty: bool = False):
            dataset = refs.create_dataset(next(names), data=data)
            _matlab_attrs(dataset, matlab_class, empty)
            return dataset.ref

        def cell(ref_list: np.ndarray, key: str | None = None):
            """A cell array: top-level variable ``key``, or an anonymous #refs# entry."""
            target = refs if key is None else mat
            dataset = target.create_dataset(key or next(names), data=ref_list,
                                            dtype=h5py.ref_dtype)
            _matlab_attrs(dataset, "cell")
            return dataset.ref

        for kind in kinds:
            pair_refs = np.empty((1, len(CUHK03_PERSONS)), dtype=h5py.ref_dtype)
            for pair, count in enumerate(CUHK03_PERSONS, start=1):
                cells = np.empty((10, count), dtype=h5py.ref_dtype)
                for person in range(1, count + 1):
                    for image in range(10):
                        box = cuhk03_box(kind, pair, person, image)
                        cells[image, person - 1] = (
                            put(np.zeros(2, np.uint64), "double", empty=True) if box is None
                            else put(box.T, "uint8"))
                pair_refs[0, pair - 1] = cell(cells)
            cell(pair_refs, key=kind)
        test_refs = np.empty((1, len(CUHK03_TESTSETS)), dtype=h5py.ref_dtype)
        for i, rows in enumerate(CUHK03_TESTSETS):
            test_refs[0, i] = put(np.asarray(rows, dtype=np.float64).T, "double")
        cell(test_refs, key="testsets")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: hacnn tests HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + bytes(8) + b"\x00\x02IM")
    return path


def cuhk03_files(kind: str) -> list[tuple[str, int, int]]:
    """(name, pid, view) of every box of the fake mat, in cell order."""
    offsets = np.cumsum([0, *CUHK03_PERSONS])
    return [(cuhk03_name(pair, person, image), int(offsets[pair - 1]) + person,
             1 if image < 5 else 2)
            for pair, count in enumerate(CUHK03_PERSONS, start=1)
            for person in range(1, count + 1) for image in range(10)
            if cuhk03_box(kind, pair, person, image) is not None]


def write_cuhk03_config(path: Path, kind: str) -> Path:
    """``cuhk03_new_protocol_config_{kind}.mat`` (MATLAB v5) for the fake mat.

    Train: pids not in ``CUHK03_TEST_PIDS``; query: the first box of each
    test id in each view; gallery: the other boxes of the test ids.
    """
    files = cuhk03_files(kind)
    train, query, gallery, seen = [], [], [], set()
    for index, (_, pid, view) in enumerate(files, start=1):  # 1-based, as in MATLAB
        if pid not in CUHK03_TEST_PIDS:
            train.append(index)
        elif (pid, view) not in seen:
            seen.add((pid, view))
            query.append(index)
        else:
            gallery.append(index)
    filelist = np.empty((len(files), 1), dtype=object)
    for i, (name, _, _) in enumerate(files):
        filelist[i, 0] = name
    column = lambda values: np.asarray(values, dtype=np.float64).reshape(-1, 1)  # noqa: E731
    savemat(path, {"filelist": filelist, "labels": column([pid for _, pid, _ in files]),
                   "camId": column([view for _, _, view in files]),
                   "train_idx": column(train), "query_idx": column(query),
                   "gallery_idx": column(gallery)}, format="5")
    return path


def make_cuhk03(root: Path, subdir: str = "cuhk03", raw: bool = True,
                configs: tuple[str, ...] = ("labeled", "detected")) -> Path:
    """torchreid's CUHK03 layout: ``subdir/cuhk03_release/cuhk-03.mat`` and the
    new-protocol config files in ``subdir/`` (images are extracted by the reader)."""
    dataset_dir = root / subdir
    dataset_dir.mkdir(parents=True, exist_ok=True)
    if raw:
        write_cuhk03_raw_mat(dataset_dir / "cuhk03_release" / "cuhk-03.mat")
    for kind in configs:
        write_cuhk03_config(dataset_dir / f"cuhk03_new_protocol_config_{kind}.mat", kind)
    return dataset_dir


# MSMT17: list file -> [(pid, camera 1-15)]; train/val images lie under the release's train
# folder, query/gallery under its test folder (train and test pids are different people).
MSMT17_SPEC: dict[str, list[tuple[int, int]]] = {
    "list_train.txt": [(0, 1), (0, 3), (2, 15), (2, 15), (7, 4)],
    "list_val.txt": [(0, 2), (5, 9)],
    "list_query.txt": [(0, 1), (3, 2)],
    "list_gallery.txt": [(0, 5), (3, 2), (3, 12), (11, 1)],
}
MSMT17_FOLDERS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}


def msmt17_name(pid: int, cam: int, frame: int) -> str:
    """``PPPP/PPPP_SSS_CC_0303morning_FFFF_N.jpg`` (the release's relative path)."""
    return f"{pid:04d}/{pid:04d}_{frame % 7:03d}_{cam:02d}_0303morning_{frame:04d}_0.jpg"


def make_msmt17(root: Path, version: str = "MSMT17_V1",
                spec: dict[str, list[tuple[int, int]]] = MSMT17_SPEC) -> Path:
    """An MSMT17 release (V1 or V2 folder names) under ``root/version`` from ``spec``."""
    dataset_dir = root / version
    train_dir, test_dir = MSMT17_FOLDERS[version]
    frames = itertools.count(100)
    for list_name, entries in spec.items():
        folder = dataset_dir / (test_dir if list_name in ("list_query.txt", "list_gallery.txt")
                                else train_dir)
        lines = []
        for pid, cam in entries:
            frame = next(frames)
            write_image(folder / msmt17_name(pid, cam, frame), _color(frame))
            lines.append(f"{msmt17_name(pid, cam, frame)} {pid}")
        (dataset_dir / list_name).write_text("\n".join(lines) + "\n")
    return dataset_dir
