"""Common base of the re-id benchmark readers: layout lookup, checks, summary.

A reader turns a user's copy of a benchmark into three sorted lists of
``(path, pid, camid)`` items: ``train`` (pids relabelled ``0..N-1`` in sorted
order of the original ids), ``query`` and ``gallery`` (original ids; the
gallery may hold junk ``-1`` and distractor ``0`` boxes, which the evaluation
ignores or counts as non-matches). Camera ids are 0-based everywhere.

Everything is checked before use: a missing folder or a file name that does
not follow the dataset's scheme raises :class:`DatasetLayoutError`; split
sizes that differ from the published ones warn (:class:`DatasetCountWarning`)
or, with ``strict=True``, raise :class:`DatasetCountError`.
"""
from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

Item = tuple[str, int, int]  # (image path, person id, 0-based camera id)

DATA_ENV = "HACNN_DATA"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
JUNK_PID = -1
DISTRACTOR_PID = 0

# Keys of the split statistics that ``ReIDDataset.counts()`` reports and that
# ``expected_counts`` may pin. Gallery statistics leave junk (-1) boxes out.
COUNT_KEYS = ("train_ids", "train_images", "query_ids", "query_images",
              "gallery_ids", "gallery_images", "cameras")


class DatasetLayoutError(ValueError):
    """A benchmark folder is missing, incomplete or holds unexpected files."""


class DatasetCountError(DatasetLayoutError):
    """Split sizes differ from the published ones (raised when ``strict=True``)."""


class DatasetCountWarning(UserWarning):
    """Split sizes differ from the published ones (a subset, or a broken copy)."""


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The data root: ``root`` if given, else the ``HACNN_DATA`` variable."""
    if root is None:
        root = os.environ.get(DATA_ENV)
        if not root:
            raise DatasetLayoutError(
                f"no data root: pass root=... or set the {DATA_ENV} environment variable "
                "to the folder that holds your datasets")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetLayoutError(f"data root {str(path)!r} is not a folder")
    return path


def find_dataset_dir(root: Path, *, title: str, names: Sequence[str], keyword: str,
                     required: Sequence[str]) -> Path:
    """Locate a dataset folder under ``root`` the way users keep it.

    Tried in order: ``root`` itself, ``root / name`` for each of ``names``
    (relative paths such as ``"market1501/Market-1501-v15.09.15"``), then any
    folder up to two levels below ``root`` whose name contains ``keyword``.
    A candidate qualifies when it holds every entry of ``required``.
    """
    def holds(path: Path, entries: Sequence[str]) -> list[bool]:
        return [(path / r).exists() for r in entries]

    explicit = [root, *(root / n for n in names)]
    for path in explicit:
        if all(holds(path, required)):
            return path
    key = keyword.lower()
    similar = sorted(p for p in (*root.glob("*"), *root.glob("*/*"))
                     if key in p.name.lower() and p.is_dir())
    found = [p for p in similar if all(holds(p, required))]
    if len(found) == 1:
        return found[0]
    expected = ", ".join(required)
    if found:
        raise DatasetLayoutError(
            f"{title}: several candidate folders under {str(root)!r}: "
            f"{', '.join(map(str, found))}; pass the one you mean as root")
    partial = [p for p in (*explicit, *similar) if p.is_dir() and any(holds(p, required))]
    if partial:
        missing = [r for r, ok in zip(required, holds(partial[0], required)) if not ok]
        raise DatasetLayoutError(
            f"{title}: {str(partial[0])!r} is incomplete: missing {', '.join(missing)} "
            f"(expected {expected})")
    tried = ", ".join(repr(str(p)) for p in explicit)
    raise DatasetLayoutError(
        f"{title} not found under {str(root)!r}: expected a folder holding {expected} "
        f"at one of {tried}, or a folder whose name contains {keyword!r}")


def warn_user(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first caller outside this package."""
    here = os.path.dirname(__file__)
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == here:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def scan_images(folder: Path, parse: Callable[[str], tuple[int, int] | None],
                pattern_text: str) -> list[Item]:
    """Sorted ``(path, pid, camid)`` items of the images in ``folder``.

    ``parse(name)`` returns ``(pid, camera)`` with a 1-based camera, or
    ``None`` when the name does not follow the scheme ``pattern_text``.
    Hidden files (``.DS_Store``, macOS ``._*`` twins) and non-image files
    (``Thumbs.db``, ``readme.txt``) are skipped; an image whose name does not
    parse is an error.
    """
    if not folder.is_dir():
        raise DatasetLayoutError(f"expected folder {str(folder)!r} does not exist")
    items = []
    for name in sorted(os.listdir(folder)):
        path = folder / name
        if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        parsed = parse(name)
        if parsed is None:
            raise DatasetLayoutError(
                f"unexpected file name {str(path)!r}: expected {pattern_text}")
        pid, cam = parsed
        items.append((str(path), pid, cam - 1))
    return items


def regex_parser(pattern: str) -> Callable[[str], tuple[int, int] | None]:
    """A ``parse`` for :func:`scan_images` from a regex with (pid, camera) groups."""
    compiled = re.compile(pattern)

    def parse(name: str) -> tuple[int, int] | None:
        match = compiled.fullmatch(name)
        return None if match is None else (int(match.group(1)), int(match.group(2)))
    return parse


def relabel(items: Iterable[Item]) -> tuple[list[Item], dict[int, int]]:
    """Map pids to ``0..N-1`` in sorted order of the original ids."""
    items = list(items)
    pid_map = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [(path, pid_map[pid], cam) for path, pid, cam in items], pid_map


class ReIDDataset:
    """Train / query / gallery lists of ``(path, pid, camid)`` plus checks.

    Subclasses read their layout, then call ``super().__init__`` with the raw
    lists (train pids as in the file names). Class attributes:

    - ``official_counts``: published split sizes (keys of ``COUNT_KEYS``), or
      ``None`` for a benchmark without official sizes (the synthetic one);
      override ``expected_counts`` when they depend on the options;
    - ``distractor_pid``: the gallery's distractor id (Market's 0), or ``None``.
    """

    official_counts: ClassVar[Mapping[str, int] | None] = None
    distractor_pid: ClassVar[int | None] = DISTRACTOR_PID  # None: pid 0 is a person (MSMT17)

    def __init__(self, train: Sequence[Item], query: Sequence[Item], gallery: Sequence[Item],
                 *, strict: bool = False, location: str | os.PathLike = "") -> None:
        for split, items in (("train", train), ("query", query), ("gallery", gallery)):
            if not items:
                raise DatasetLayoutError(
                    f"{type(self).__name__}: the {split} split is empty"
                    + (f" (read from {str(location)!r})" if location else ""))
        self.train, self.train_pid_map = relabel(train)
        self.query = list(query)
        self.gallery = list(gallery)
        self.num_train_pids = len(self.train_pid_map)
        self.num_train_cams = len({cam for _, _, cam in self.train})
        self.check_cameras()
        self.check_counts(strict)

    @property
    def expected_counts(self) -> Mapping[str, int] | None:
        """Split sizes this copy should have (default: ``official_counts``)."""
        return self.official_counts

    def counts(self) -> dict[str, int]:
        """Split statistics; gallery ids/images leave junk (-1) boxes out."""
        gallery = [it for it in self.gallery if it[1] != JUNK_PID]
        return {
            "train_ids": self.num_train_pids, "train_images": len(self.train),
            "query_ids": len({pid for _, pid, _ in self.query}), "query_images": len(self.query),
            "gallery_ids": len({pid for _, pid, _ in gallery}), "gallery_images": len(gallery),
            "cameras": len({cam for _, _, cam in (*self.train, *self.query, *self.gallery)}),
        }

    def check_cameras(self) -> None:
        """Every camera id lies in ``0..cameras-1`` (the published number, if any)."""
        cameras = (self.expected_counts or {}).get("cameras")
        for path, _, cam in (*self.train, *self.query, *self.gallery):
            if cam < 0 or (cameras is not None and cam >= cameras):
                raise DatasetLayoutError(
                    f"{str(path)!r}: camera {cam + 1} outside 1..{cameras or '?'} "
                    f"for {type(self).__name__}")

    def check_counts(self, strict: bool = False) -> None:
        """Compare :meth:`counts` with :attr:`expected_counts`; warn or raise."""
        expected = self.expected_counts
        if not expected:
            return
        found = self.counts()
        diffs = [f"{key}: expected {want:,}, found {found[key]:,}"
                 for key, want in expected.items() if found[key] != want]
        if not diffs:
            return
        message = (f"{type(self).__name__} split sizes differ from the published ones "
                   f"({'; '.join(diffs)}); fine for a subset, otherwise check your copy")
        if strict:
            raise DatasetCountError(message)
        warn_user(message, DatasetCountWarning)

    def summary(self) -> str:
        """A torchreid-style table of ids, images and cameras per split."""
        def row(name: str, items: Sequence[Item]) -> str:
            ids = len({pid for _, pid, _ in items})
            cams = len({cam for _, _, cam in items})
            return f"  {name:<8} | {ids:5d} | {len(items):8d} | {cams:9d}"
        rule = "  " + "-" * 42
        lines = [f"{type(self).__name__}", rule, "  subset   | # ids | # images | # cameras", rule,
                 row("train", self.train), row("query", self.query),
                 row("gallery", self.gallery), rule]
        junk = sum(pid == JUNK_PID for _, pid, _ in self.gallery)
        distractors = sum(pid == self.distractor_pid for _, pid, _ in self.gallery)
        if junk or distractors:
            lines.append(f"  gallery holds {distractors} distractor (0) "
                         f"and {junk} junk (-1) images")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


class FolderDataset(ReIDDataset):
    """A benchmark kept as ``bounding_box_train/``, ``query/``, ``bounding_box_test/``.

    The layout Market-1501 introduced and DukeMTMC-reID (and the synthetic
    benchmark) follow. Subclasses set:

    - ``title``, ``folder_names``, ``keyword``: how to find the folder
      (see :func:`find_dataset_dir`);
    - ``name_pattern`` (a regex whose groups 1, 2 are the pid and the 1-based
      camera) and ``pattern_text`` (the scheme, for error messages);
    - ``ignored_pids``: ids left out of train and query (junk, distractors).
    """

    title: ClassVar[str] = "dataset"
    folder_names: ClassVar[tuple[str, ...]] = ()
    keyword: ClassVar[str] = ""
    name_pattern: ClassVar[str] = ""
    pattern_text: ClassVar[str] = ""
    ignored_pids: ClassVar[frozenset[int]] = frozenset()
    train_dir, query_dir, gallery_dir = "bounding_box_train", "query", "bounding_box_test"

    def __init__(self, root: str | os.PathLike | None = None, *, strict: bool = False,
                 extra_folders: Sequence[str] = ()) -> None:
        self.dataset_dir = find_dataset_dir(
            resolve_root(root), title=self.title, names=self.folder_names, keyword=self.keyword,
            required=(self.train_dir, self.query_dir, self.gallery_dir, *extra_folders))
        train = self.read_folder(self.train_dir, drop_ignored=True)
        query = self.read_folder(self.query_dir, drop_ignored=True)
        gallery = self.read_folder(self.gallery_dir)
        super().__init__(train, self.build_query(query), gallery, strict=strict,
                         location=self.dataset_dir)

    def read_folder(self, name: str, drop_ignored: bool = False) -> list[Item]:
        """Sorted items of one folder, optionally without ``ignored_pids``."""
        items = scan_images(self.dataset_dir / name, regex_parser(self.name_pattern),
                            self.pattern_text)
        return [it for it in items if not (drop_ignored and it[1] in self.ignored_pids)]

    def build_query(self, query: list[Item]) -> list[Item]:
        """The query set to use (hook for protocols such as multi-query)."""
        return query
