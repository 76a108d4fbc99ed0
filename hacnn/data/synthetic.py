"""The synthetic re-id benchmark: the project's embedded default data set.

:func:`generate_synthetic` writes a deterministic benchmark in Market-1501's
layout and file names (``bounding_box_train/``, ``bounding_box_test/``,
``query/``; ``PPPP_cCsS_FFFFFF_NN.jpg``; distractors ``0000``, junk ``-1``),
so the Market-1501 reader reads it unchanged; :class:`Synthetic` generates on
first use and reads it back. People are drawn from attributes out of small
palettes (so that twins differing only in shoes, a bag or a hat exist), seen
front/back/side by six cameras with their own scenes and sensors, and cropped
with a detector-like ``misalignment`` (see DESIGN.md, "Synthetic re-id
benchmark").

Contents of a benchmark folder:

- ``bounding_box_train/`` the train identities; ``query/`` one image (``_00``)
  per test identity and camera it appears in; ``bounding_box_test/`` the other
  images of the test identities, plus distractors (``0000``: scenery, or a
  stranger badly cropped) and junk (``-1``: fragments of test identities,
  which the evaluation ignores) in Market-1501's proportions: 2,793
  distractors and 3,819 junk per 15,913 non-junk gallery boxes (17.6 % of the
  non-junk gallery are distractors; junk adds 24 % of that count).
- ``synthetic.json``: format, version, parameters, file counts, cameras and
  every identity's attributes (``twin_of`` / ``differs_in`` for twins).
- ``images.csv``: per image its view, walking phase, crop box (world units)
  and person box (pixels: shoulders, head top, soles).

Sizes (:data:`SIZES`): ``tiny`` 24 + 16 ids x ~8 images (352 files, ~1 s),
``small`` 100 + 50 ids x ~10 images (the quick training preset's),
``default`` 200 + 100 ids x ~30 images over 6 cameras (10,338 files, ~20 CPU
seconds), ``large`` 751 + 750 ids x ~20 images (Market-1501's id counts).

Modules: the plan (what every image shows) in
:mod:`~hacnn.data.synthetic_plan`, people in
:mod:`~hacnn.data.synthetic_render`, scenes and cameras in
:mod:`~hacnn.data.synthetic_scene`.
"""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import shutil
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from PIL import Image

from . import synthetic_scene as C
from .base import DATA_ENV
from .market1501 import Market1501
from .synthetic_plan import SIZES, SyntheticConfig, make_plan

FORMAT, VERSION = "hacnn-synthetic", 1
SPLITS = ("bounding_box_train", "bounding_box_test", "query")


# --- writing --------------------------------------------------------------------

def _render_chunk(job: tuple) -> int:
    """Worker: draw and save a chunk of records (JPEG) under ``folder``."""
    records, cameras, folder, cfg = job
    for r in records:
        img = C.render_image(r, r["identity"], cameras[r["camid"]], height=cfg.height,
                             width=cfg.width)
        Image.fromarray(img).save(Path(folder) / r["folder"] / r["name"], quality=cfg.jpeg_quality)
    return len(records)


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The ``synthetic.json`` of ``root``, or None if there is none (or not ours)."""
    try:
        manifest = json.loads((Path(root) / "synthetic.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def _complete(root: Path, cfg: SyntheticConfig) -> bool:
    """``root`` holds a finished benchmark made with exactly ``cfg``."""
    manifest = read_manifest(root)
    if manifest is None or manifest.get("version") != VERSION or manifest["params"] != asdict(cfg):
        return False
    return all((root / f).is_dir() and len(os.listdir(root / f)) == manifest["files"][f]
               for f in SPLITS)


def generate_synthetic(out_dir: str | os.PathLike, *, size: str = "default",
                       num_train_ids: int | None = None, num_test_ids: int | None = None,
                       num_cameras: int = 6, images_per_id: int | None = None,
                       misalignment: float = 0.25, seed: int = 0, workers: int = 2,
                       overwrite: bool = False, config: SyntheticConfig | None = None) -> Path:
    """Write the benchmark into ``out_dir`` (Market-1501 layout) and return its path.

    Unset counts take the ``size`` preset's values (:data:`SIZES`); ``config``
    (a whole :class:`SyntheticConfig`) replaces all the generation keywords.
    Idempotent: a folder that already holds a complete benchmark with the same
    parameters is reused as it is. A non-empty folder that is not a synthetic
    benchmark is never written into; one that holds a benchmark with other
    parameters is replaced only with ``overwrite=True``. The images are drawn
    into a hidden sibling folder that is renamed into place at the end, so an
    interrupted run leaves nothing half-written. ``workers`` processes draw
    (``<= 1``: in this process); the output does not depend on their number.
    """
    cfg = config or SyntheticConfig.for_size(
        size, num_train_ids=num_train_ids, num_test_ids=num_test_ids, num_cameras=num_cameras,
        images_per_id=images_per_id, misalignment=float(misalignment), seed=int(seed))
    out = Path(out_dir).expanduser().absolute()
    if _complete(out, cfg):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        old = read_manifest(out) if out.is_dir() else None
        if old is None:
            raise FileExistsError(
                f"{str(out)!r} exists and is not a synthetic benchmark (no {FORMAT} "
                "synthetic.json); refusing to write into it: choose an empty or new folder")
        if not overwrite:
            diff = {k: (old.get("params", {}).get(k), v) for k, v in asdict(cfg).items()
                    if old.get("params", {}).get(k) != v}
            raise FileExistsError(
                f"{str(out)!r} holds a synthetic benchmark with other parameters "
                f"(found vs wanted: {diff or 'same, but incomplete'}); pass overwrite=True "
                "to replace it, or choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _write(tmp, cfg, workers)
        if out.exists():
            if any(out.iterdir()):  # an old benchmark, replaced with overwrite=True
                trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
                out.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                out.rmdir()
        try:
            tmp.rename(out)
        except OSError:
            if not _complete(out, cfg):  # unless a concurrent run just wrote the same
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write(folder: Path, cfg: SyntheticConfig, workers: int) -> None:
    identities, cameras, records = make_plan(cfg)
    for split in SPLITS:
        (folder / split).mkdir(parents=True)
    chunks = [(records[i:i + 64], cameras, str(folder), cfg) for i in range(0, len(records), 64)]
    for cam in cameras:  # drawn once here, shared with forked workers
        C.backdrop(cam)
    if workers > 1:
        with multiprocessing.get_context().Pool(workers) as pool:
            for _ in pool.imap_unordered(_render_chunk, chunks):
                pass
    else:
        for chunk in chunks:
            _render_chunk(chunk)
    with open(folder / "images.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["folder", "name", "pid", "camid", "view", "phase",
                         "box_x0", "box_y0", "box_x1", "box_y1",
                         "person_x0", "person_y0", "person_x1", "person_y1"])
        for r in records:
            writer.writerow([r["folder"], r["name"], r["pid"], r["camid"], r["view"] if
                             r["identity"] else "", r["phase"], *r["box"],
                             *(r["person_box"] or [""] * 4)])
    files = {s: sum(r["folder"] == s for r in records) for s in SPLITS}
    gallery = [r["pid"] for r in records if r["folder"] == "bounding_box_test"]
    manifest = {
        "format": FORMAT, "version": VERSION, "params": asdict(cfg), "files": files,
        "counts": {"train_ids": cfg.num_train_ids, "test_ids": cfg.num_test_ids,
                   "query": files["query"], "gallery": files["bounding_box_test"],
                   "distractors": gallery.count(0), "junk": gallery.count(-1)},
        "cameras": cameras,
        "identities": {f"{pid:04d}": v for pid, v in sorted(identities.items())},
    }
    (folder / "synthetic.json").write_text(json.dumps(manifest, indent=1))


# --- reading ------------------------------------------------------------------

def default_root(cfg: SyntheticConfig) -> Path:
    """``$HACNN_DATA/synthetic/<cfg.name>``, or ``~/.cache/hacnn/synthetic/<cfg.name>``
    when ``HACNN_DATA`` is unset or read-only (and does not hold it already)."""
    data = os.environ.get(DATA_ENV)
    if data:
        path = Path(data).expanduser() / "synthetic" / cfg.name
        if path.is_dir() or os.access(path.parent if path.parent.is_dir() else
                                      Path(data).expanduser(), os.W_OK):
            return path
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "hacnn" / "synthetic" / cfg.name


class Synthetic(Market1501):
    """The synthetic benchmark, generated on first use and read as Market-1501.

    ``root`` may be a benchmark folder (it holds ``synthetic.json``: read as
    it is, unless the given parameters contradict it), a new or empty folder
    (generated there), or a data root with other content (generated into
    ``root/synthetic/<size>-m<misalignment>-s<seed>``); ``None`` means
    :func:`default_root`. Unset parameters take the ``size`` preset's values
    (``size`` defaults to ``"default"``); a benchmark of an older generator
    version in the default folder is replaced. ``.manifest`` holds the parameters,
    cameras and per-identity attributes; ``.config`` the
    :class:`SyntheticConfig`.
    """

    official_counts = None
    title = "Synthetic benchmark"
    folder_names = ()
    keyword = "synthetic"

    def __init__(self, root: str | os.PathLike | None = None, size: str | None = None, *,
                 misalignment: float | None = None, seed: int | None = None, workers: int = 2,
                 strict: bool = False, **overrides) -> None:
        given = {k: v for k, v in dict(size=size, misalignment=misalignment, seed=seed,
                                       **overrides).items() if v is not None}
        path = Path(root).expanduser().absolute() if root is not None else None
        manifest = read_manifest(path) if path is not None else None
        found = SyntheticConfig(**manifest["params"]) if manifest else None
        if found is None or replace(found, **given) != found or manifest["version"] != VERSION:
            cfg = SyntheticConfig.for_size(size or "default", misalignment=misalignment,
                                           seed=seed, **overrides)
            if path is None:  # our cache: an outdated benchmark there is replaced
                path = generate_synthetic(default_root(cfg), config=cfg, workers=workers,
                                          overwrite=True)
            else:
                if manifest is None and path.is_dir() and any(path.iterdir()):
                    path = path / "synthetic" / cfg.name
                path = generate_synthetic(path, config=cfg, workers=workers)
            manifest = read_manifest(path)
        self.root = path
        self.manifest = manifest
        self.config = SyntheticConfig(**manifest["params"])  # type: ignore[index]
        super().__init__(path, strict=strict)


def read_images_table(root: str | os.PathLike) -> list[dict]:
    """The rows of ``images.csv``: every image's folder, name, pid, camera, view,
    crop box (world units) and person box (pixels; empty without a person)."""
    with open(Path(root) / "images.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- figure and command line -----------------------------------------------------

def _sample_pids(manifest: dict, count: int) -> list[int]:
    """A twin and its original first (they differ in one local detail), then identities
    with a backpack, a skirt or shorts, a hat, then any."""
    ids = {int(k): v["attributes"] for k, v in manifest["identities"].items()}
    twins = [p for p, v in manifest["identities"].items() if v["twin_of"]]
    twins.sort(key=lambda p: (manifest["identities"][p]["differs_in"] != "bag", p))
    out = [int(twins[0]), manifest["identities"][twins[0]]["twin_of"]] if twins else []
    wishes = [lambda a: a["bag"] == "backpack", lambda a: a["lower_kind"] != "trousers",
              lambda a: a["hat"] != "none", lambda a: True]
    for wish in wishes * count:
        out += [next((p for p in sorted(ids) if p not in out and wish(ids[p])), None)]
    return [p for p in out if p is not None][:count]


def _row_label(ids: dict, pid: int) -> str:
    info = ids[f"{pid:04d}"]
    twin = f"\ntwin of {info['twin_of']:04d},\ndiffers in {info['differs_in']}" \
        if info["twin_of"] else ""
    return f"id {pid:04d} ({info['split']}){twin}"


def plot_synthetic_samples(sources, pids: list[int] | None = None, num_ids: int = 5,
                           num_cols: int = 6, path: str | os.PathLike | None = None):
    """A grid of crops: one panel per source (a benchmark folder or :class:`Synthetic`),
    rows = identities (by default a twin pair first), columns = their images over
    cameras and views. Sources made with the same seed show the same images (the
    same people, views and cameras), only cropped differently. Returns the figure;
    ``path`` also saves it.
    """
    import matplotlib.pyplot as plt

    if isinstance(sources, (str, os.PathLike, Synthetic)):
        sources = [sources]
    roots = [Path(s.root if isinstance(s, Synthetic) else s) for s in sources]
    manifests = [read_manifest(r) for r in roots]
    ids = manifests[0]["identities"]
    pids = pids or _sample_pids(manifests[0], num_ids)
    rows = [r for r in read_images_table(roots[0]) if r["view"]]
    picked = []  # (pid, [rows]) one image per camera first, then other views
    for pid in pids:
        own = [r for r in rows if int(r["pid"]) == pid]
        first = list({r["camid"]: r for r in reversed(own)}.values())
        views = {r["view"] for r in first}
        order = first + [r for r in own if r["view"] not in views] + own
        unique = list({r["name"]: r for r in order}.values())
        picked.append((pid, sorted(unique[:num_cols], key=lambda r: (r["camid"], r["name"]))))
    h, w, gap, under = manifests[0]["params"]["height"], manifests[0]["params"]["width"], 6, 14
    fig, axes = plt.subplots(1, len(roots), squeeze=False, figsize=(
        len(roots) * num_cols * 0.95 + 1.4, len(pids) * 1.9 + 0.8))
    for ax, root, manifest in zip(axes[0], roots, manifests):
        mosaic = np.full((len(pids) * (h + under), num_cols * (w + gap) - gap, 3), 255, np.uint8)
        for i, (_, images) in enumerate(picked):
            for k, r in enumerate(images):
                y, x = i * (h + under), k * (w + gap)
                mosaic[y:y + h, x:x + w] = np.asarray(Image.open(root / r["folder"] / r["name"])
                                                      .convert("RGB"))
                ax.text(x + w / 2, y + h + 1, f"cam {int(r['camid']) + 1} {r['view']}",
                        ha="center", va="top", fontsize=6.5)
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_title(f"misalignment {manifest['params']['misalignment']:g}", fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([i * (h + under) + h / 2 for i in range(len(pids))],
                      [_row_label(ids, pid) for pid in pids], fontsize=8)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.suptitle("Synthetic re-id benchmark: the same people, cameras and views at two "
                 "detection misalignments", fontsize=11)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``python -m hacnn synth`` (see :func:`run_synth`)."""
    p = parser
    p.add_argument("--out", type=Path, help="output folder (default: $HACNN_DATA/synthetic/"
                   "<size>-m<misalignment>-s<seed>, else ~/.cache/hacnn/synthetic/...)")
    p.add_argument("--size", choices=sorted(SIZES), default="default",
                   help="preset for the counts below (default: %(default)s)")
    p.add_argument("--ids", type=int, help="number of training identities")
    p.add_argument("--test-ids", type=int, help="number of test identities")
    p.add_argument("--cameras", type=int, default=6, help="2..9 (default: %(default)s)")
    p.add_argument("--images-per-id", type=int, help="mean images per identity")
    p.add_argument("--misalignment", type=float, default=0.25,
                   help="detector-like crop error in [0, 1] (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="drawing processes")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a synthetic benchmark with other parameters in --out")
    p.add_argument("--figure", type=Path, help="also save a grid of samples (PNG) here")
    return parser


def run_synth(args: argparse.Namespace) -> Path:
    """Generate (or reuse) the benchmark the parsed ``args`` describe; print a summary."""
    cfg = SyntheticConfig.for_size(
        args.size, num_train_ids=args.ids, num_test_ids=args.test_ids,
        num_cameras=args.cameras, images_per_id=args.images_per_id,
        misalignment=args.misalignment, seed=args.seed)
    out = Path(args.out) if args.out else default_root(cfg)
    reused = _complete(out.expanduser().absolute(), cfg)
    out = generate_synthetic(out, config=cfg, workers=args.workers, overwrite=args.overwrite)
    c = read_manifest(out)["counts"]
    print(f"{'reused' if reused else 'wrote'} {out}: {c['train_ids']} train ids / "
          f"{read_manifest(out)['files']['bounding_box_train']} images, {c['test_ids']} test "
          f"ids, {c['query']} query, {c['gallery']} gallery ({c['distractors']} distractors, "
          f"{c['junk']} junk)")
    if args.figure:
        plot_synthetic_samples(out, path=args.figure)
        print(f"figure: {args.figure}")
    return out


def main_synth(argv: list[str] | None = None) -> int:
    """``python -m hacnn synth ...`` (also ``python -m hacnn.data.synthetic ...``)."""
    parser = argparse.ArgumentParser(prog="hacnn synth", description=(
        "Generate the deterministic synthetic re-id benchmark in Market-1501's layout."))
    run_synth(add_synth_arguments(parser).parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main_synth())
