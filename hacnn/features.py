"""Feature extraction: a model over image batches, or a folder of images into a ``.npz``.

:func:`extract_features` runs a model over ``(images, pids, camids, paths)``
loaders (what :func:`hacnn.evaluation.evaluate_model` uses; re-exported
there). :func:`extract_folder` is ``python -m hacnn extract``: every image
under a folder (recursive, sorted), the eval transform, the fastest safe
path of the machine (:func:`choose_precision`), and one ``.npz`` with

- ``paths`` (N,) str, relative to the folder (POSIX separators), sorted;
- ``features`` (N, D) float32;
- ``pids``, ``camids`` (N,) int64 and ``has_id`` (N,) bool: the identity and
  0-based camera where the file name follows a benchmark's scheme
  (Market-1501 ``PPPP_cCsS_FFFFFF_NN.jpg``, DukeMTMC-reID ``PPPP_cC_fFFFFFFF.jpg``,
  CUHK03-NP ``PPPP_cC_N.png``, MSMT17 ``PPPP_SSS_CC_<date><time>_FFFF_N.jpg``;
  the readers' own patterns), or your ``pattern`` (``--pattern REGEX``, named
  groups ``identity`` and ``camera``: :mod:`hacnn.data.names`), -1 elsewhere;
- ``root``, ``weights``, ``digest``, ``precision``, ``feature_dim``.

The file is written to a temp file in the same folder and renamed, so it is
never partial. Work is saved in chunks to ``<out>.parts/`` as it goes; a
rerun with the same weights, images and settings picks them up, and the
folder is removed once the ``.npz`` is written.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .checkpoint import atomic_path
from .data.base import IMAGE_SUFFIXES, DatasetLayoutError
from .data.loading import ImageDataset, ImageReadError
from .data.names import names_ids, parse_ids

__all__ = ["extract_features", "inference_net", "choose_precision", "list_images", "parse_ids",
           "extract_folder", "extract_images", "load_features", "add_extract_arguments", "model_digest", "FolderFeatures", "BF16_MIN_COSINE"]

# bf16 weights + activations against fp32 on the first batch: the smallest row-wise
# cosine similarity accepted (a random and a trained HA-CNN give > 0.9999 here).
BF16_MIN_COSINE = 0.999
FORMAT_VERSION = 1
CHUNK = 1024                                   # images per saved chunk of a folder run


# ----------------------------------------------------------------------------- batches of a loader

def inference_net(model, optimize: bool = True, dtype: torch.dtype | None = None):
    """(model to run, input memory format): an HACNN optimised once, anything else as given.

    ``dtype=torch.bfloat16`` stores an HACNN's weights in bf16
    (:func:`hacnn.inference.optimize_for_inference`); feed it bf16 images.
    """
    from .blocks import ConvBlock
    from .inference import optimize_for_inference
    from .model import HACNN

    if not (optimize and isinstance(model, HACNN)):
        return model, torch.contiguous_format
    if dtype is not None or any(isinstance(m, ConvBlock) for m in model.modules()):   # not optimised yet
        model = optimize_for_inference(model, dtype=dtype)
    return model, torch.channels_last


def _net_dtype(net) -> torch.dtype:
    return next((p.dtype for p in net.parameters()), torch.float32)


def _batch_features(net, x: torch.Tensor, flip: bool, amp: bool, device: torch.device) -> torch.Tensor:
    """(B, 3, H, W) images -> (B, D) float32 features (mirror-averaged with ``flip``)."""
    with torch.autocast(device.type, enabled=amp):
        f = net(x).float()                                            # (B, D)
        if flip:
            f = (f + net(x.flip(-1)).float()) / 2
    if f.dim() != 2 or len(f) != len(x):
        raise ValueError(f"model output: expected a ({len(x)}, D) feature matrix, "
                         f"received shape {tuple(f.shape)}")
    return f


def _run(net, layout, loader, device, flip: bool, amp: bool, progress: bool, desc: str = "features"):
    """Yield ((B, D) float32 CPU features, batch) for each loader batch."""
    dtype = _net_dtype(net)
    for batch in tqdm(loader, desc=desc, disable=not progress):
        x = batch[0].to(device, dtype=dtype, non_blocking=True, memory_format=layout)   # (B, 3, H, W)
        yield _batch_features(net, x, flip, amp, device).cpu(), batch


@torch.inference_mode()
def extract_features(model, loader, device=None, flip: bool = False, amp: bool | None = None,
                     progress: bool = True, normalize: bool = False, optimize: bool = True):
    """Run ``model`` (eval mode) over ``loader`` batches ``(images, pids, camids, paths)``.

    Returns (features (N, D) float32 CPU tensor, pids (N,), camids (N,) numpy).
    ``flip`` averages the features of each image and its horizontal mirror;
    ``normalize`` L2-normalises the final features; ``amp`` (default: on CUDA
    only) runs the model under autocast. ``optimize`` (default) runs an
    :class:`~hacnn.HACNN` through :func:`hacnn.inference.optimize_for_inference`
    (a copy: folded batch norms, fused convolutions, channels_last; the same
    features to float32 rounding, ~1.5x faster on CPU); other models run as given.
    """
    device = torch.device(device or next((p.device for p in model.parameters()), "cpu"))
    amp = device.type == "cuda" if amp is None else amp
    was_training, feats, pids, camids = model.training, [], [], []
    model.eval()
    net, layout = inference_net(model, optimize)
    try:
        for f, (_, pid, camid, _) in _run(net, layout, loader, device, flip, amp, progress):
            feats.append(f), pids.append(torch.as_tensor(pid)), camids.append(torch.as_tensor(camid))
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("loader: expected at least one batch, received an empty loader")
    features = F.normalize(torch.cat(feats), dim=1) if normalize else torch.cat(feats)
    return features, torch.cat(pids).numpy(), torch.cat(camids).numpy()


@torch.inference_mode()
def choose_precision(model, x: torch.Tensor, *, device=None, precision: str = "auto",
                     flip: bool = False, min_cosine: float = BF16_MIN_COSINE):
    """The fastest safe path for an HACNN: ``(net, layout, "bf16" | "fp32")``.

    ``"auto"``: bf16 weights where :func:`hacnn.training.native_bf16` holds,
    checked against fp32 on the batch ``x``: if any row's cosine similarity is
    below ``min_cosine``, fp32 with a warning. ``"fp32"`` / ``"bf16"`` force one.
    """
    from .training import native_bf16, resolve_device

    device = resolve_device(device)
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision: expected 'auto', 'fp32' or 'bf16', received {precision!r}")
    on = lambda net, layout: (net.to(device).eval(), layout)          # noqa: E731
    fp32 = on(*inference_net(model))
    if precision == "fp32" or (precision == "auto" and not native_bf16(device)):
        return (*fp32, "fp32")
    bf16 = on(*inference_net(model, dtype=torch.bfloat16))
    if precision == "bf16":
        return (*bf16, "bf16")
    ref, low = (_batch_features(net, x.to(device, dtype=_net_dtype(net), memory_format=layout),
                                flip, False, device) for net, layout in (fp32, bf16))
    cos = float(F.cosine_similarity(low, ref, dim=1).min())
    if cos < min_cosine:
        warnings.warn(f"bf16 features differ from fp32 on the first batch (cosine similarity "
                      f"{cos:.5f} < {min_cosine}); extracting in fp32", RuntimeWarning, stacklevel=2)
        return (*fp32, "fp32")
    return (*bf16, "bf16")


# ----------------------------------------------------------------------------- folders of images

def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image under ``folder`` (recursive; hidden files skipped), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetLayoutError(f"expected a folder of images, {str(folder)!r} is not a folder")
    found = [Path(d, n).relative_to(folder) for d, dirs, names in os.walk(folder)
             for n in names if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES
             and not any(p.startswith(".") for p in Path(d).relative_to(folder).parts)]
    if not found:
        raise DatasetLayoutError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {str(folder)!r}")
    return sorted(found, key=lambda p: p.as_posix())


class _Images(ImageDataset):
    """``ImageDataset`` whose samples end with a read flag; with ``skip``, unreadable images
    give a zero image and ``ok=False`` instead of an :class:`ImageReadError`."""

    def __init__(self, items, transform, size: tuple[int, int], skip: bool):
        super().__init__(items, transform)
        self.size, self.skip = size, skip

    def __getitem__(self, index):
        try:
            return (*super().__getitem__(index), True)
        except ImageReadError:
            if not self.skip:
                raise
            path, pid, camid = self.items[index]
            return torch.zeros(3, *self.size), pid, camid, path, False


@dataclass
class FolderFeatures:
    """What :func:`extract_folder` writes (and :func:`load_features` reads)."""

    paths: list[str]             # relative to root, POSIX
    features: np.ndarray         # (N, D) float32
    pids: np.ndarray             # (N,) int64, -1 where has_id is False
    camids: np.ndarray           # (N,) int64, 0-based, -1 where has_id is False
    has_id: np.ndarray           # (N,) bool
    root: str = ""
    precision: str = "fp32"
    digest: str = ""
    skipped: tuple[str, ...] = ()


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state (names and float32 values): the same weights, the same digest."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _atomic_npz(path: Path, **arrays) -> None:
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez(tmp, **arrays)


def _parts_folder(out: Path, key: dict) -> Path:
    """``<out>.parts/`` holding chunks of this very run (another run's are cleared)."""
    parts = out.with_name(out.name + ".parts")
    manifest = parts / "manifest.json"
    if parts.is_dir() and not (manifest.is_file() and json.loads(manifest.read_text()) == key):
        for old in parts.glob("part-*.npz"):
            old.unlink()
    parts.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(key, indent=1))
    return parts


def extract_folder(weights, folder, out=None, *, batch_size: int = 64, device=None,
                   precision: str = "auto", flip: bool = False, skip_corrupt: bool = False,
                   workers: int | None = 0, progress: bool = True, force: bool = False,
                   pattern=None) -> FolderFeatures:
    """Features of every image under ``folder`` (see the module docstring); saved to ``out``.

    ``weights``: a checkpoint path (hacnn or torchreid) or an :class:`~hacnn.HACNN`.
    ``pattern``: ids from this file-name regex (:mod:`hacnn.data.names`),
    checked before anything runs. Other arguments: :func:`extract_images`.
    ``out`` is not overwritten unless ``force``; its chunks in ``<out>.parts/``
    make an interrupted run resumable.
    """
    from .checkpoint import load_model

    folder, out = Path(folder), None if out is None else Path(out)
    if out is not None and out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    names = list_images(folder)
    ids = names_ids(names, pattern, where=f" under {str(folder)!r}")
    model = weights if isinstance(weights, torch.nn.Module) else load_model(weights)
    parts = None
    if out is not None:
        files = [[n.as_posix(), (folder / n).stat().st_size, (folder / n).stat().st_mtime_ns] for n in names]
        key = {"version": FORMAT_VERSION, "digest": model_digest(model), "precision": precision,
               "flip": flip, "skip_corrupt": skip_corrupt, "chunk": CHUNK,
               "files": hashlib.sha256(json.dumps(files).encode()).hexdigest()}
        out.parent.mkdir(parents=True, exist_ok=True)
        parts = _parts_folder(out, key)
    result = extract_images(model, names, folder, batch_size=batch_size, device=device,
                            precision=precision, flip=flip, skip_corrupt=skip_corrupt,
                            workers=workers, progress=progress, parts=parts, ids=ids)
    if out is not None:
        _save(result, out, weights)
        shutil.rmtree(parts)
    return result


@torch.inference_mode()
def extract_images(model, names, root=None, *, batch_size: int = 64, device=None,
                   precision: str = "auto", flip: bool = False, skip_corrupt: bool = False,
                   workers: int | None = 0, progress: bool = True, parts: Path | None = None,
                   ids=None) -> FolderFeatures:
    """Features of the images ``root / name`` (``root`` None: the names are paths).

    ``precision``: see :func:`choose_precision` (decided on the first batch).
    ``skip_corrupt``: leave out images that cannot be read, with one warning
    that counts them (else the first one raises :class:`ImageReadError`
    naming it). ``parts``: a folder to save (and pick up) chunks of
    :data:`CHUNK` images. ``ids``: ``(pid, camid)`` or None per name (default:
    from the file names, :func:`parse_ids`).
    """
    from .data.transforms import build_transforms
    from .training import resolve_device

    names, device = [Path(n) for n in names], resolve_device(device)
    ids = [parse_ids(n.name) for n in names] if ids is None else list(ids)
    if len(ids) != len(names):
        raise ValueError(f"ids: expected one (pid, camid) or None per name ({len(names)}), received {len(ids)}")
    items = [(str(n if root is None else Path(root) / n), *(i or (-1, -1))) for n, i in zip(names, ids)]
    size = tuple(model.config.input_size)
    data = _Images(items, build_transforms(*size, train=False), size, skip_corrupt)
    chunks, chosen, net = [], None, None
    bar = tqdm(total=len(items), desc="extract", disable=not progress)
    for c, lo in enumerate(range(0, len(items), CHUNK)):
        hi, part = min(lo + CHUNK, len(items)), None if parts is None else parts / f"part-{c:05d}.npz"
        if part is not None and part.is_file():                       # done by an earlier run
            with np.load(part) as z:
                chunks.append((z["features"], z["ok"]))
                chosen = chosen or str(z["precision"])
            bar.update(hi - lo)
            continue
        feats, oks = [], []
        for images, *_, ok in torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(lo, hi)),
                                                          batch_size=batch_size, num_workers=workers or 0):
            if net is None:       # first batch (or the precision a resumed run chose) picks the path
                net, layout, chosen = choose_precision(model, images, device=device,
                                                       precision=chosen or precision, flip=flip)
            x = images.to(device, dtype=_net_dtype(net), memory_format=layout)
            feats.append(_batch_features(net, x, flip, False, device).cpu().numpy())
            oks.append(ok.numpy())
            bar.update(len(images))
        chunks.append((np.concatenate(feats), np.concatenate(oks)))
        if part is not None:
            _atomic_npz(part, features=chunks[-1][0], ok=chunks[-1][1], precision=chosen)
    bar.close()
    features, ok = (np.concatenate(a) for a in zip(*chunks))
    keep, where = np.flatnonzero(ok), "" if root is None else f" under {str(root)!r}"
    skipped = tuple(names[i].as_posix() for i in np.flatnonzero(~ok))
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        warnings.warn(f"skipped {len(skipped)} of {len(names)} images{where} that cannot be read: {shown}",
                      RuntimeWarning, stacklevel=2)
    if not len(keep):
        raise ImageReadError(f"none of the {len(names)} images{where} can be read")
    kept = [ids[i] for i in keep]
    return FolderFeatures(
        paths=[names[i].as_posix() for i in keep], features=features[keep].astype(np.float32),
        pids=np.array([i[0] if i else -1 for i in kept], np.int64),
        camids=np.array([i[1] if i else -1 for i in kept], np.int64),
        has_id=np.array([i is not None for i in kept], bool),
        root="" if root is None else str(Path(root).resolve()),
        precision=chosen, digest=model_digest(model), skipped=skipped)


def _save(r: FolderFeatures, out: Path, weights) -> None:
    name = "" if isinstance(weights, torch.nn.Module) else str(weights)
    _atomic_npz(out, paths=np.array(r.paths, dtype=str), features=r.features, pids=r.pids,
                camids=r.camids, has_id=r.has_id, root=r.root, precision=r.precision,
                weights=name, digest=r.digest, feature_dim=r.features.shape[1],
                version=FORMAT_VERSION)


def load_features(path: str | os.PathLike, feature_dim: int | None = None) -> FolderFeatures:
    """Read a ``.npz`` of :func:`extract_folder`; ``feature_dim`` checks the feature size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"features file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            r = FolderFeatures(list(z["paths"].tolist()), z["features"], z["pids"], z["camids"],
                               z["has_id"], str(z["root"]), str(z["precision"]), str(z["digest"]))
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path} is not a features file of `python -m hacnn extract` "
                         f"({type(e).__name__}: {e})") from None
    if r.features.ndim != 2 or len(r.features) != len(r.paths):
        raise ValueError(f"{path}: expected (N, D) features for its {len(r.paths)} paths, "
                         f"received shape {r.features.shape}")
    if feature_dim is not None and r.features.shape[1] != feature_dim:
        raise ValueError(f"{path} holds {r.features.shape[1]}-d features, but the model gives "
                         f"{feature_dim}-d ones: extract the gallery again with these weights")
    return r


def add_extract_arguments(p) -> None:
    """``python -m hacnn extract`` options."""
    p.add_argument("--weights", type=Path, required=True, help="hacnn or torchreid checkpoint")
    p.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="features file to write (.npz)")
    p.add_argument("--pattern", default=None, metavar="REGEX", help="ids from this file-name regex "
                   "instead of the benchmarks' names: named groups identity (required) and camera, as "
                   r"--dataset folder's, e.g. '(?P<identity>\d+)_c(?P<camera>\d+)_.*' (integers; camera as written)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto (default): "
                   f"bf16 where the device computes it natively and it agrees with fp32 on the first batch "
                   f"(cosine similarity >= {BF16_MIN_COSINE}), else fp32")
    p.add_argument("--flip", action="store_true", help="average features of image and mirror image")
    p.add_argument("--skip-corrupt", action="store_true", help="leave out unreadable images (with a warning) "
                   "instead of stopping at the first")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--workers", type=int, default=0, help="data loader processes (default: 0)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_extract)


def run_extract(args) -> int:
    r = extract_folder(args.weights, args.images, args.out, batch_size=args.batch_size, device=args.device,
                       precision=args.precision, flip=args.flip, skip_corrupt=args.skip_corrupt,
                       workers=args.workers, progress=not args.no_progress, force=args.force,
                       pattern=args.pattern)
    print(f"wrote {args.out}: {len(r.paths)} images x {r.features.shape[1]}-d features ({r.precision}), "
          f"{int(r.has_id.sum())} with ids from their names" + (f", {len(r.skipped)} skipped" if r.skipped else ""))
    return 0
