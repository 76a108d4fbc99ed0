"""CUHK03 reader (Li et al., "DeepReID: Deep Filter Pairing Neural Network for
Person Re-identification", CVPR 2014), with the 767/700 protocol of Zhong et
al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR
2017 (CUHK03-NP), and the classic 20-split protocol.

Where the data may lie under the root (``cuhk03/`` as torchreid keeps it)::

    cuhk03/cuhk03_release/cuhk-03.mat                  raw boxes (HDF5 / v7.3)
    cuhk03/cuhk03_new_protocol_config_labeled.mat      767/700 split (v5 .mat)
    cuhk03/cuhk03_new_protocol_config_detected.mat
    cuhk03/images_labeled/1_001_1_01.png ...           images (extracted once)
    cuhk03-np/{labeled,detected}/{bounding_box_train,bounding_box_test,query}/
                                                       the CUHK03-NP release

``cuhk-03.mat`` holds ``labeled`` and ``detected``: 5 cells (camera pairs) of
M x 10 cells (persons x images; images 1-5 from the pair's first camera, 6-10
from its second; some are empty) and ``testsets``: 20 cells of 100 x 2
(pair, person) test ids. Images are extracted as
``{pair}_{person:03d}_{view}_{image:02d}.png`` (torchreid's names, which the
new-protocol files list), never overwriting an existing file. Camera ids are
the view within the pair (0 or 1).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .base import (DatasetLayoutError, Item, ReIDDataset, regex_parser, resolve_root,
                   scan_images)

# CUHK03-NP readme (Zhong et al. 2017, github.com/zhunzhong07/person-re-ranking).
CUHK03_NEW_COUNTS: Mapping[str, Mapping[str, int]] = {
    "labeled": {"train_ids": 767, "train_images": 7_368, "query_ids": 700,
                "query_images": 1_400, "gallery_ids": 700, "gallery_images": 5_328,
                "cameras": 2},
    "detected": {"train_ids": 767, "train_images": 7_365, "query_ids": 700,
                 "query_images": 1_400, "gallery_ids": 700, "gallery_images": 5_332,
                 "cameras": 2},
}
# Li et al. 2014: 1,467 ids; each of the 20 splits tests on 100 of them.
CUHK03_CLASSIC_COUNTS: Mapping[str, int] = {
    "train_ids": 1_367, "query_ids": 100, "gallery_ids": 100, "cameras": 2}

RAW_MAT = "cuhk-03.mat"
CONFIG_MAT = "cuhk03_new_protocol_config_{kind}.mat"
CONFIG_FIELDS = ("labels", "filelist", "train_idx", "query_idx", "gallery_idx")
EXTRACTED_PATTERN = r"(\d)_(\d{3})_([12])_(\d{2})\.png"
NP_PATTERN = r"(\d{4})_c([12])_(\d+)\.png"
NP_PATTERN_TEXT = "PPPP_cC_N.png (e.g. 0001_c1_1.png)"


def _dataset_dirs(root: Path) -> list[Path]:
    return [root, root / "cuhk03", root / "CUHK03", root / "cuhk03_release",
            root / "cuhk03" / "cuhk03_release"]


def _find_file(root: Path, name: str) -> Path | None:
    for folder in _dataset_dirs(root):
        for path in (folder / name, folder / "cuhk03_release" / name):
            if path.is_file():
                return path
    return None


def _home(mat_path: Path) -> Path:
    """The dataset folder of a .mat file: its folder, above ``cuhk03_release/``."""
    folder = mat_path.parent
    return folder.parent if folder.name == "cuhk03_release" else folder


def _find_np_dir(root: Path, kind: str) -> Path | None:
    """The CUHK03-NP release folder for ``kind`` (labeled or detected), if any."""
    candidates = [root / "cuhk03-np" / kind, root / "cuhk03" / "cuhk03-np" / kind,
                  root / "CUHK03-NP" / kind]
    if "np" in root.name.lower():
        candidates.append(root / kind)
    if root.name == kind:
        candidates.append(root)
    required = ("bounding_box_train", "bounding_box_test", "query")
    return next((c for c in candidates if all((c / r).is_dir() for r in required)), None)


def _image_name(pair: int, person: int, image: int) -> str:
    """torchreid's name for image ``image`` (0-9) of ``person`` (0-based) in ``pair``."""
    view = 1 if image < 5 else 2
    return f"{pair + 1}_{person + 1:03d}_{view}_{image + 1:02d}.png"


class RawMat(NamedTuple):
    """What :func:`read_raw_mat` finds in ``cuhk-03.mat`` for one kind of box."""

    boxes: list[tuple[int, int, str]]  # (pair, person, image name), 1-based, non-empty cells
    persons: list[int]                 # number of persons (rows) of each camera pair
    testsets: list[np.ndarray]         # the classic splits: (100, 2) (pair, person) rows


def read_raw_mat(mat_path: Path, kind: str, out_dir: Path | None = None,
                 only: set[str] | None = None) -> RawMat:
    """Enumerate the boxes of ``cuhk-03.mat`` and extract the missing ones.

    With ``out_dir``, images missing there (restricted to the names in
    ``only``, if given) are written as PNG; existing files are never touched.
    """
    import h5py
    from PIL import Image

    def cells(ref_array) -> np.ndarray:
        return np.asarray(ref_array[()]).ravel()

    boxes, persons = [], []
    try:
        mat = h5py.File(mat_path, "r")
    except OSError as err:
        raise DatasetLayoutError(f"{str(mat_path)!r} is not a readable MATLAB v7.3 (HDF5) "
                                 f"file: {err}") from err
    with mat:
        for key in (kind, "testsets"):
            if key not in mat:
                raise DatasetLayoutError(f"{str(mat_path)!r} has no {key!r} field")
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            existing = set(os.listdir(out_dir))
        for pair, pair_ref in enumerate(cells(mat[kind])):
            rows = mat[pair_ref][()].T  # (M, 10) references
            persons.append(len(rows))
            for person, row in enumerate(rows):
                for image, ref in enumerate(row):
                    box = mat[ref]
                    if box.ndim < 3 or box.size == 0:  # an empty cell
                        continue
                    name = _image_name(pair, person, image)
                    boxes.append((pair + 1, person + 1, name))
                    wanted = only is None or name in only
                    if out_dir is not None and wanted and name not in existing:
                        tmp = out_dir / f".{name}.part"
                        Image.fromarray(np.ascontiguousarray(box[()].T)).save(tmp, format="PNG")
                        os.replace(tmp, out_dir / name)
        testsets = [np.asarray(mat[ref][()]).T.astype(int) for ref in cells(mat["testsets"])]
    return RawMat(boxes, persons, testsets)


def _load_config(path: Path) -> dict[str, np.ndarray]:
    from scipy.io import loadmat
    try:
        config = loadmat(path)
    except Exception as err:  # scipy raises several types for a bad file
        raise DatasetLayoutError(f"{str(path)!r} is not a readable .mat file: {err}") from err
    missing = [f for f in CONFIG_FIELDS if f not in config]
    if missing:
        raise DatasetLayoutError(f"{str(path)!r} lacks the field(s) {', '.join(missing)} "
                                 f"(expected {', '.join(CONFIG_FIELDS)}, camId)")
    return config


def _cell_str(cell) -> str:
    return str(np.asarray(cell).ravel()[0])


class CUHK03(ReIDDataset):
    """CUHK03, labeled or detected boxes, new (767/700) or classic split.

    ``split="new"`` (Zhong et al. 2017): 767 training and 700 test ids, one
    query per test id and camera (1,400 queries), read from the CUHK03-NP
    release folders if present, else from
    ``cuhk03_new_protocol_config_{labeled,detected}.mat`` (1-based
    ``train_idx``/``query_idx``/``gallery_idx`` into ``filelist``,
    ``labels``, ``camId``) with images in ``images_{labeled,detected}/``,
    extracted from ``cuhk-03.mat`` on first use when missing.

    ``split="classic"`` (Li et al. 2014): test ids from ``testsets[split_id]``
    (100 ids, 20 splits), all other 1,367 ids train. As in torchreid, query
    and gallery are both the test ids' images; the Market-style evaluation
    removes same-camera matches, so each query is matched across views.
    Person ids are numbered 1..1,467 across the five camera pairs.

    Args:
        root: data root (or ``HACNN_DATA``).
        labeled: hand-labelled boxes (True) or DPM detections (False).
        split: ``"new"`` or ``"classic"``.
        split_id: which classic split (0-19); must be 0 for ``"new"``.
        strict: raise instead of warning when split sizes differ from the
            published ones.
    """

    def __init__(self, root: str | os.PathLike | None = None, labeled: bool = True,
                 split: str = "new", split_id: int = 0, strict: bool = False) -> None:
        if split not in ("new", "classic"):
            raise ValueError(f"split must be 'new' or 'classic', got {split!r}")
        if split == "new" and split_id != 0:
            raise ValueError("the new (767/700) protocol has a single split: split_id=0")
        self.kind = "labeled" if labeled else "detected"
        self.split, self.split_id = split, split_id
        root = resolve_root(root)
        if split == "classic":
            train, query, gallery = self._read_classic(root)
        elif (np_dir := _find_np_dir(root, self.kind)) is not None:
            self.source, self.dataset_dir = "np-release", np_dir
            train, query, gallery = self._read_np_release(np_dir)
        else:
            train, query, gallery = self._read_new_config(root)
        super().__init__(train, query, gallery, strict=strict, location=self.dataset_dir)

    @property
    def expected_counts(self) -> Mapping[str, int]:
        if self.split == "new":
            return CUHK03_NEW_COUNTS[self.kind]
        return CUHK03_CLASSIC_COUNTS

    def _read_np_release(self, folder: Path) -> tuple[list[Item], list[Item], list[Item]]:
        parse = regex_parser(NP_PATTERN)
        return tuple(scan_images(folder / sub, parse, NP_PATTERN_TEXT)
                     for sub in ("bounding_box_train", "query", "bounding_box_test"))

    def _raw_mat(self, root: Path, needed_for: str) -> Path:
        path = _find_file(root, RAW_MAT)
        if path is None:
            raise DatasetLayoutError(
                f"CUHK03: {RAW_MAT} (needed for {needed_for}) not found in {str(root)!r}, "
                "its cuhk03/ or cuhk03_release/ folder, or their cuhk03_release/ subfolder")
        return path

    def _images_dir(self, dataset_dir: Path) -> Path:
        return dataset_dir / f"images_{self.kind}"

    def _read_new_config(self, root: Path) -> tuple[list[Item], list[Item], list[Item]]:
        name = CONFIG_MAT.format(kind=self.kind)
        config_path = _find_file(root, name)
        if config_path is None:
            raise DatasetLayoutError(
                f"CUHK03 ({self.kind}, new protocol) not found under {str(root)!r}: expected "
                f"cuhk03-np/{self.kind}/{{bounding_box_train,bounding_box_test,query}}/ or {name} "
                f"in {str(root)!r} or {str(root / 'cuhk03')!r}")
        self.source, self.dataset_dir = "protocol-mat", _home(config_path)
        config = _load_config(config_path)
        names = [_cell_str(c) for c in config["filelist"].ravel()]
        labels = config["labels"].ravel().astype(int)
        parse = regex_parser(EXTRACTED_PATTERN)
        for n in names:
            if parse(n) is None:
                raise DatasetLayoutError(f"{str(config_path)!r}: unexpected file name {n!r} in "
                                         "filelist (expected like 1_001_1_01.png)")
        if "camId" in config:
            cams = config["camId"].ravel().astype(int) - 1
        else:
            cams = np.array([parse(n)[1] for n in names]) - 1  # the view in the name
        if not len(names) == len(labels) == len(cams):
            raise DatasetLayoutError(f"{str(config_path)!r}: filelist, labels and camId differ "
                                     "in length")
        images = self._images_dir(self.dataset_dir)
        needed = set(names)
        present = set(os.listdir(images)) if images.is_dir() else set()
        if not needed <= present:
            read_raw_mat(self._raw_mat(root, f"extracting {images}"), self.kind, images, needed)
            missing = sorted(needed - set(os.listdir(images)))
            if missing:
                raise DatasetLayoutError(f"{len(missing)} images listed in {str(config_path)!r} "
                                         f"are in neither {str(images)!r} nor {RAW_MAT}, e.g. "
                                         f"{missing[0]}")

        def subset(field: str) -> list[Item]:
            idx = config[field].ravel().astype(int) - 1  # 1-based in the file
            if idx.size and (idx.min() < 0 or idx.max() >= len(names)):
                raise DatasetLayoutError(f"{str(config_path)!r}: {field} indexes outside "
                                         f"1..{len(names)}")
            return sorted((str(images / names[i]), int(labels[i]), int(cams[i])) for i in idx)
        return subset("train_idx"), subset("query_idx"), subset("gallery_idx")

    def _read_classic(self, root: Path) -> tuple[list[Item], list[Item], list[Item]]:
        mat_path = self._raw_mat(root, "the classic protocol")
        self.source, self.dataset_dir = "classic-mat", _home(mat_path)
        images = self._images_dir(self.dataset_dir)
        raw = read_raw_mat(mat_path, self.kind, images)
        if not 0 <= self.split_id < len(raw.testsets):
            raise ValueError(
                f"split_id must be in 0..{len(raw.testsets) - 1}, got {self.split_id}")
        offsets = np.cumsum([0, *raw.persons])  # pid = offset of the pair + person
        test = {(int(p), int(q)) for p, q in raw.testsets[self.split_id]}
        train, tests = [], []
        for pair, person, name in raw.boxes:
            view = int(name.split("_")[2])
            item = (str(images / name), int(offsets[pair - 1]) + person, view - 1)
            (tests if (pair, person) in test else train).append(item)
        return sorted(train), sorted(tests), sorted(tests)
