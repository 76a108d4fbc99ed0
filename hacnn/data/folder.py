"""Your own data: folders of person crops as train / query / gallery.

Two ways to say who is who (``layout=``)::

    identity-folders   root/<identity>/<image>     identity = the folder's name (any string)
    pattern            root/<image>                identity (and camera) from the file name

``pattern`` is a regular expression that must match the whole file name (or
the name without its extension), with named groups ``identity`` (required
in the ``pattern`` layout, not allowed with identity folders) and
``camera`` (optional): e.g. ``r"(?P<identity>\\d+)_c(?P<camera>\\d+)_.*"``.
A ``camera`` callable (the match's groups -> camera string) can derive the
camera instead (:class:`~hacnn.data.cuhk03_pair.CUHK03Pair` maps an image
index to its camera).

Two ways to say what is test (``split_folders=``, default: detected):

- split folders, each in the layout: ``root/train/`` with ``root/query/``
  and ``root/gallery/`` (used as they are), or with ``root/test/`` (split into
  query and gallery as below). Identities of ``train/`` and of the test
  folders are separate namespaces (the same name may be another person);
  ``query/`` and ``gallery/`` share one.
- one pool (``root`` in the layout) split by identity: ``test_ids`` (a
  fraction in (0, 1) or a count of identities, default 0.5) drawn with
  ``numpy.random.default_rng(split_seed)`` from the sorted identities.

Test images -> query / gallery (``query=``), deterministic, in sorted path
order: ``"one-per-camera"`` (default, as CUHK03-NP) makes the first image of
each identity and camera a query (one per identity without cameras) and the
rest the gallery; ``"one-per-identity"`` takes only the first image of each
identity (the most gallery matches when an identity has one image per
camera); ``"first-camera"`` makes every image of the first camera a query and
the other cameras' images the gallery.

Numbering (natural sort: ``"id2" < "id10"``): training identities are
relabelled ``0..N-1``, test identities numbered ``1..M`` (0 and -1 keep
their Market meanings elsewhere), cameras ``0..C-1``; the names stay in
``identity_names`` (train label -> name), ``test_identity_names`` (pid ->
name) and ``camera_names`` (camid -> name). Without a camera, every camid is 0 and
:attr:`protocol` is ``"nocam"`` (see :mod:`hacnn.evaluation`: every other
image of the identity is a true match; query and gallery share no file).

Checks (one :class:`DatasetLayoutError` naming the path and what was
expected): a missing or empty folder, split folders partly there, a pattern
that matches no name or a name it does not match, images that cannot be
opened (an error: training would fail on them later), the same file twice,
no query with a true match. Non-image files are skipped with one warning
that counts them; queries without a true match are kept, warned about with
counts (:class:`UnmatchedQueryWarning`) and skipped by the evaluation, which
reports them in ``num_skipped_queries``. Readers never write anything.
"""
from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .base import IMAGE_SUFFIXES, DatasetLayoutError, Item, ReIDDataset, resolve_root, warn_user

LAYOUTS = ("identity-folders", "pattern")
QUERY_CHOICES = ("one-per-camera", "one-per-identity", "first-camera")
SPLIT_DIRS = ("train", "query", "gallery", "test")
CLUTTER = frozenset({"thumbs.db", "desktop.ini"})  # OS files skipped without a word
Raw = tuple[str, str, "str | None"]  # (path, identity name, camera name or None)
CameraFn = Callable[[Mapping[str, str]], str]


class UnmatchedQueryWarning(UserWarning):
    """Some queries have no true match in the gallery (the evaluation skips them)."""


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs by value: ``"id2" < "id10"``, ``"7" < "10"``."""
    parts = re.split(r"(\d+)", text)
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p) for p in parts), text


def compile_pattern(pattern: str | re.Pattern | None, layout: str) -> re.Pattern | None:
    """The checked file-name regex of ``layout`` (its groups: see the module docstring)."""
    if pattern is None:
        if layout == "pattern":
            raise ValueError("layout 'pattern' needs a pattern with a named group 'identity', "
                             r"e.g. (?P<identity>\d+)_c(?P<camera>\d+)_.*")
        return None
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {err}") from None
    groups = regex.groupindex
    if layout == "pattern" and "identity" not in groups:
        raise ValueError(f"pattern {regex.pattern!r} has no named group 'identity': expected e.g. "
                         r"(?P<identity>\d+)_c(?P<camera>\d+)_.* (groups: identity, camera)")
    if layout == "identity-folders" and "identity" in groups:
        raise ValueError(f"pattern {regex.pattern!r} has a group 'identity', but with identity "
                         "folders the folder names the identity; use layout='pattern' or drop the group")
    return regex


def match_name(regex: re.Pattern, name: str) -> dict[str, str] | None:
    """The groups that matched of ``regex`` on the whole file name or its stem; None: no match."""
    match = regex.fullmatch(name) or regex.fullmatch(os.path.splitext(name)[0])
    return None if match is None else {k: v for k, v in match.groupdict().items() if v is not None}


def _has_identity_group(pattern: str | re.Pattern | None) -> bool:
    try:
        return pattern is not None and "identity" in re.compile(pattern).groupindex
    except re.error:
        return True  # let compile_pattern report it


class _Scan:
    """Images of folders in one layout, with counts of what was skipped."""

    def __init__(self, layout: str, regex: re.Pattern | None, camera: CameraFn | None) -> None:
        self.layout, self.regex, self.camera = layout, regex, camera
        self.skipped: list[str] = []

    def _entries(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """(image files, sub-folders) of ``folder``; other files are counted as skipped."""
        images, dirs = [], []
        for name in sorted(os.listdir(folder), key=natural_key):
            path = folder / name
            if name.startswith(".") or name.lower() in CLUTTER:
                continue
            if path.is_dir():
                dirs.append(path)
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(path)
            else:
                self.skipped.append(str(path))
        return images, dirs

    def _parse(self, path: Path, identity: str | None) -> Raw:
        groups: dict[str, str] | None = {}
        if self.regex is not None:
            groups = match_name(self.regex, path.name)
            if groups is None:
                raise DatasetLayoutError(f"file name {str(path)!r} does not match the pattern "
                                         f"{self.regex.pattern!r}")
        identity = groups.get("identity") if identity is None else identity
        if not identity:
            raise DatasetLayoutError(f"{str(path)!r}: the pattern's 'identity' group is empty")
        camera = self.camera(groups) if self.camera is not None else groups.get("camera")
        return str(path), identity, None if camera is None else str(camera)

    def folder(self, folder: Path) -> list[Raw]:
        """Sorted items of ``folder`` (an error if it has none)."""
        if not folder.is_dir():
            raise DatasetLayoutError(f"expected folder {str(folder)!r} does not exist")
        images, dirs = self._entries(folder)
        if self.layout == "pattern":
            self.skipped += [str(d) + os.sep for d in dirs]
            items = [self._parse(p, None) for p in images]
            hint = "images directly in it named by the pattern"
        else:
            if images:
                raise DatasetLayoutError(
                    f"{str(images[0])!r} lies directly in {str(folder)!r}: identity folders expect "
                    "<identity>/<image> (or use layout='pattern' with a file-name regex)")
            items = []
            for sub in dirs:
                files, nested = self._entries(sub)
                self.skipped += [str(d) + os.sep for d in nested]
                items += [self._parse(p, sub.name) for p in files]
            hint = "one sub-folder per identity holding its images"
        if not items:
            suffixes = "/".join(sorted(IMAGE_SUFFIXES))
            raise DatasetLayoutError(f"no images in {str(folder)!r}: expected {hint} ({suffixes})")
        return items


# How image files begin (JPEG, PNG, BMP): a cheap check that a file is an image at all.
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM")


def check_readable(items: Sequence[Raw | Item], where: Path) -> None:
    """Every image file is non-empty and starts like a JPEG, PNG or BMP file.

    An error names the count and the first bad files (a truncated image is
    found later, when :func:`hacnn.data.read_image` decodes it).
    """
    bad = []
    for path, *_ in items:
        try:
            with open(path, "rb") as fh:
                head = fh.read(8)
            reason = "empty file (0 bytes)" if not head else \
                None if head.startswith(MAGIC) else "not a JPEG, PNG or BMP file"
        except OSError as err:
            reason = err.strerror or str(err)
        if reason:
            bad.append(f"{path!r} ({reason})")
    if bad:
        raise DatasetLayoutError(f"{len(bad)} of {len(items)} images under {str(where)!r} cannot be "
                                 f"read as images, e.g. {'; '.join(bad[:3])}; remove or replace them")


def check_distinct(splits: Mapping[str, Sequence[Raw | Item]], resolve: bool = True) -> None:
    """No file (after resolving links, if ``resolve``) appears twice, in one split or two."""
    seen: dict[str, tuple[str, str]] = {}
    for split, items in splits.items():
        for path, *_ in items:
            real = os.path.realpath(path) if resolve else os.path.normpath(path)
            if real in seen:
                other_split, other = seen[real]
                raise DatasetLayoutError(
                    f"the same image is read twice: {other!r} ({other_split}) and {path!r} ({split}); "
                    "each image must appear once, or a query would match its own copy")
            seen[real] = (split, path)


def pick_test_ids(identities: Sequence[str], test_ids: float | int, seed: int) -> set[str]:
    """``test_ids`` (fraction or count) of ``identities`` drawn with ``seed``; the rest train."""
    n = len(identities)
    if n < 2:
        raise DatasetLayoutError(f"a pool split needs at least 2 identities, found {n}")
    if isinstance(test_ids, float) and 0 < test_ids < 1:
        count = min(max(round(test_ids * n), 1), n - 1)
    elif isinstance(test_ids, (int, np.integer)) and not isinstance(test_ids, bool) and 1 <= test_ids < n:
        count = int(test_ids)
    else:
        raise ValueError(f"test_ids: expected a fraction in (0, 1) or a count in 1..{n - 1} "
                         f"of the {n} identities, got {test_ids!r}")
    order = np.random.default_rng(seed).permutation(n)
    return {identities[i] for i in order[:count]}


def choose_queries(items: Sequence[Item], query: str) -> tuple[list[Item], list[Item]]:
    """Test items -> (query, gallery) by ``query`` (see the module docstring)."""
    if query == "first-camera":
        first = min(cam for _, _, cam in items)
        return [it for it in items if it[2] == first], [it for it in items if it[2] != first]
    seen, queries, gallery = set(), [], []
    for item in items:
        key = item[1] if query == "one-per-identity" else (item[1], item[2])
        (gallery if key in seen else queries).append(item)
        seen.add(key)
    return queries, gallery


class ImageFolderReID(ReIDDataset):
    """A user's own person crops (see the module docstring for layouts and splits).

    Args:
        root: the folder (or ``HACNN_DATA``).
        layout: ``"identity-folders"`` or ``"pattern"`` (default: ``"pattern"``
            when ``pattern`` has an ``identity`` group, else identity folders).
        pattern: file-name regex with groups ``identity`` / ``camera``.
        camera: callable ``groups -> camera`` (instead of a ``camera`` group).
        split_folders: read ``train/`` + ``query/`` + ``gallery/`` (or
            ``train/`` + ``test/``); default: when ``root`` holds one of them.
        test_ids: pool split: fraction or number of test identities (0.5).
        split_seed: seed of the pool split (0).
        query: ``"one-per-camera"``, ``"one-per-identity"`` or ``"first-camera"``.
        check_images: check that every image file starts like an image (default True).
        strict: raise instead of warning when split sizes differ from
            :attr:`expected_counts` (presets; a plain folder has none).
    """

    distractor_pid = None  # test ids are 1..M, each a person

    def __init__(self, root: str | os.PathLike | None = None, *, layout: str | None = None,
                 pattern: str | re.Pattern | None = None, camera: CameraFn | None = None,
                 split_folders: bool | None = None, test_ids: float | int | None = None,
                 split_seed: int = 0, query: str = "one-per-camera", check_images: bool = True,
                 strict: bool = False) -> None:
        if layout is None:
            layout = "pattern" if _has_identity_group(pattern) else "identity-folders"
        for name, value, choices in (("layout", layout, LAYOUTS), ("query", query, QUERY_CHOICES)):
            if value not in choices:
                raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
        root = resolve_root(root)
        self.dataset_dir = root
        scan = _Scan(layout, compile_pattern(pattern, layout), camera)
        present = [d for d in SPLIT_DIRS if (root / d).is_dir()]
        if split_folders is None:
            split_folders = bool(present) and test_ids is None
        if split_folders and test_ids is not None:
            raise ValueError("test_ids splits one pool by identity; it does not apply to split folders")
        raw = self._read_split_folders(root, present, scan) if split_folders else \
            self._read_pool(root, scan, 0.5 if test_ids is None else test_ids, split_seed)
        if scan.skipped:
            warn_user(f"skipped {len(scan.skipped)} entries under {str(root)!r} that are not images "
                      f"in the {layout} layout, e.g. {scan.skipped[0]!r} (images end in "
                      f"{', '.join(sorted(IMAGE_SUFFIXES))})", UserWarning)
        check_distinct(raw)
        if check_images:
            check_readable([it for items in raw.values() for it in items], root)
        train, query, gallery = self._number(raw, query)
        self.protocol = "market" if self.camera_names else "nocam"
        super().__init__(train, query, gallery, strict=strict, location=root)
        self.identity_names = {label: self._train_names[pid]
                               for pid, label in self.train_pid_map.items()}
        self.num_unmatched_queries = self._check_matches(root)

    def _read_split_folders(self, root: Path, present: list[str], scan: _Scan) -> dict[str, list[Raw]]:
        folders = ("train", "test") if "test" in present else ("train", "query", "gallery")
        expected = "train/ with query/ and gallery/, or train/ with test/"
        if "test" in present and ("query" in present or "gallery" in present):
            raise DatasetLayoutError(f"split folders under {str(root)!r}: both test/ and "
                                     f"query/ or gallery/; expected {expected}")
        missing = [f"{d}/" for d in folders if d not in present]
        if missing:
            found = ", ".join(f"{d}/" for d in present) or "none of them"
            raise DatasetLayoutError(f"split folders under {str(root)!r} are incomplete: found "
                                     f"{found}, missing {', '.join(missing)} (expected {expected})")
        return {d: scan.folder(root / d) for d in folders}

    def _read_pool(self, root: Path, scan: _Scan, test_ids: float | int, seed: int) -> dict[str, list[Raw]]:
        pool = scan.folder(root)
        names = sorted({identity for _, identity, _ in pool}, key=natural_key)
        test = pick_test_ids(names, test_ids, seed)
        return {"train": [it for it in pool if it[1] not in test],
                "test": [it for it in pool if it[1] in test]}

    def _number(self, raw: dict[str, list[Raw]], query: str) -> tuple[list[Item], list[Item], list[Item]]:
        """Names -> ints: cameras over all splits; train and test identities apart (docstring)."""
        cams = {cam for items in raw.values() for _, _, cam in items}
        if None in cams and len(cams) > 1:
            bad = next(p for items in raw.values() for p, _, cam in items if cam is None)
            raise DatasetLayoutError(f"{bad!r} has no camera while other images have one: the "
                                     "pattern's 'camera' group must match in every name")
        self.camera_names = sorted(cams - {None}, key=natural_key)
        cam_index = {name: i for i, name in enumerate(self.camera_names)}
        test_splits = ("test",) if "test" in raw else ("query", "gallery")

        def numbering(*splits: str) -> dict[str, int]:
            names = {i for s in splits for _, i, _ in raw[s]}
            return {n: k for k, n in enumerate(sorted(names, key=natural_key), start=1)}

        def numbered(split: str, ids: dict[str, int]) -> list[Item]:
            return sorted((p, ids[i], cam_index.get(c, 0)) for p, i, c in raw[split])

        train_ids, test_ids = numbering("train"), numbering(*test_splits)
        self._train_names = {k: n for n, k in train_ids.items()}
        self.test_identity_names = {k: n for n, k in test_ids.items()}
        train = numbered("train", train_ids)
        if "test" not in raw:
            return train, numbered("query", test_ids), numbered("gallery", test_ids)
        if query == "first-camera" and len(self.camera_names) < 2:
            raise ValueError("query='first-camera' needs images of at least two cameras; "
                             f"found {len(self.camera_names)}")
        return (train, *choose_queries(numbered("test", test_ids), query))

    def _check_matches(self, root: Path) -> int:
        """Count queries without a true match; warn with counts, or raise when none has one."""
        if self.protocol == "market":
            gallery = {(pid, cam) for _, pid, cam in self.gallery}
            pid_cams: dict[int, set[int]] = {}
            for pid, cam in gallery:
                pid_cams.setdefault(pid, set()).add(cam)
            matched = [bool(pid_cams.get(pid, set()) - {cam}) for _, pid, cam in self.query]
        else:
            gallery_pids = {pid for _, pid, _ in self.gallery}
            matched = [pid in gallery_pids for _, pid, _ in self.query]
        lost = [it for it, ok in zip(self.query, matched) if not ok]
        if not lost:
            return 0
        names = sorted({self.test_identity_names[pid] for _, pid, _ in lost}, key=natural_key)
        rule = ("another camera's image of the identity" if self.protocol == "market"
                else "another image of the identity")
        message = (f"{len(lost)} of {len(self.query)} queries ({len(names)} identities, e.g. "
                   f"{names[0]!r}) under {str(root)!r} have no true match ({rule}) in the gallery")
        if len(lost) == len(self.query):
            raise DatasetLayoutError(f"{message}: nothing to evaluate")
        warn_user(f"{message}; the evaluation skips them and counts them in num_skipped_queries",
                  UnmatchedQueryWarning)
        return len(lost)


# ----------------------------------------------------------------------------- command line

def add_folder_arguments(parser: argparse.ArgumentParser) -> None:
    """``--layout``, ``--pattern``, ``--split-folders``, ``--test-ids``, ... for ``--dataset folder``."""
    g = parser.add_argument_group("your own data (--dataset folder; see hacnn.data.folder)")
    g.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="identity-folders: ROOT/<identity>/<image>; pattern: one folder, identity "
                   "from --pattern (default: pattern if --pattern has an identity group)")
    g.add_argument("--pattern", default=None, metavar="REGEX",
                   help="file-name regex with named groups identity and/or camera, "
                   r"e.g. '(?P<identity>\d+)_c(?P<camera>\d+)_.*'")
    g.add_argument("--split-folders", action="store_true", default=None,
                   help="ROOT holds train/ + query/ + gallery/ (or train/ + test/); default when present")
    g.add_argument("--test-ids", type=_fraction_or_count, default=None, metavar="N",
                   help="split one pool by identity: a fraction (0.3) or a count (100) of test "
                   "identities (default 0.5)")
    g.add_argument("--split-seed", type=int, default=None, help="seed of the pool split (default 0)")
    g.add_argument("--query", choices=QUERY_CHOICES, default=None, dest="query_choice",
                   help="test images -> queries: the first image of each identity and camera "
                   "(default), of each identity, or every image of the first camera")


def _fraction_or_count(text: str) -> float | int:
    return float(text) if any(c in text for c in ".eE") else int(text)


FOLDER_OPTIONS = {"layout": "layout", "pattern": "pattern", "split_folders": "split_folders",
                  "test_ids": "test_ids", "split_seed": "split_seed", "query_choice": "query"}


def folder_options(args: argparse.Namespace) -> dict:
    """Reader keywords from parsed CLI arguments ({} when none is given)."""
    options = {key: getattr(args, attr) for attr, key in FOLDER_OPTIONS.items()
               if getattr(args, attr, None) is not None}
    if options and getattr(args, "dataset", None) != "folder":
        flags = ", ".join("--" + a.replace("_choice", "").replace("_", "-")
                          for a in FOLDER_OPTIONS if getattr(args, a, None) is not None)
        raise ValueError(f"{flags} describe your own folder: use them with --dataset folder")
    return options
