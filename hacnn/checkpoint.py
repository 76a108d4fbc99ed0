"""Safe, atomic checkpoint files.

Loading always uses ``torch.load(..., weights_only=True)``: a file that needs
arbitrary pickled objects (a crafted or foreign pickle) is refused with a
clear error instead of being executed. Saving writes a temporary file in the
same folder, fsyncs it and renames it over the target, so a crash or SIGKILL
mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

FORMAT = "hacnn"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, unsafe or does not fit the model."""


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save`` to ``path`` via a temp file + fsync + rename (atomic on POSIX), with the
    permissions a plain ``open`` gives (:func:`atomic_path`; a bare temp file would be 0600)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temp file beside ``path`` to write; fsynced and renamed over ``path`` when the
    block succeeds, removed when it fails (so ``path`` is never partial). The file
    gets the permissions a plain ``open`` would give (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def safe_load(path: str | Path, map_location="cpu"):
    """Load a checkpoint with ``weights_only=True``; one clear error on any failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it needs objects that are not plain tensors/containers "
            f"(weights_only=True rejected it). Only load checkpoints you trust; details: {e}"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many types on a damaged or foreign file
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a PyTorch file): {reason}") from None


def load_weights(model: torch.nn.Module, state_dict: dict, source, what: str | None = None) -> None:
    """``model.load_state_dict(state_dict)`` or one one-line :class:`CheckpointError`.

    The message names ``source`` (the file) and what did not fit: keys with
    other shapes (checkpoint vs model), then missing and unexpected keys, a
    few of each (PyTorch's own message lists every key on its own line).
    """
    own = model.state_dict()
    shapes = [f"{k} (checkpoint {list(v.shape)}, model {list(own[k].shape)})"
              for k, v in state_dict.items()
              if k in own and hasattr(v, "shape") and v.shape != own[k].shape]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    problems = []
    for label, keys in (("size mismatch for", shapes), ("missing keys", missing),
                        ("unexpected keys", unexpected)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{label} {', '.join(keys[:3])}{more}")
    if problems:
        raise CheckpointError(f"{source} does not fit {what or type(model).__name__}: "
                              + "; ".join(problems))
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:  # anything the checks above missed, on one line
        raise CheckpointError(f"{source} does not fit {what or type(model).__name__}: "
                              + " ".join(str(e).split())) from None


def model_state(obj: dict) -> tuple[dict, dict | None]:
    """(state_dict, config dict or None) from any supported checkpoint layout.

    Supported: hacnn checkpoints ``{"format": "hacnn", "model": ..., "config": ...}``,
    torchreid checkpoints ``{"state_dict": ...}`` (converted), and bare state dicts
    in either naming.
    """
    from .convert import from_torchreid

    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict checkpoint, got {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        return obj["model"], obj.get("config")
    sd = obj.get("state_dict", obj)
    keys = [k.removeprefix("module.") for k in sd]
    if any(k.startswith(("inception1.", "ha1.")) for k in keys):
        return from_torchreid(sd), None
    if any(k.startswith("global_levels.") for k in keys):
        return {k.removeprefix("module."): v for k, v in sd.items()}, None
    raise CheckpointError("checkpoint holds no HA-CNN weights (neither hacnn nor torchreid names)")


def load_model(path: str | Path, num_classes: int | None = None, **overrides):
    """Build a :class:`hacnn.HACNN` from a checkpoint file (hacnn or torchreid)."""
    from .config import HACNNConfig
    from .model import HACNN

    sd, cfg = model_state(safe_load(path))
    config = HACNNConfig.from_dict(cfg) if cfg else HACNNConfig()
    n_ckpt = int(sd["classifier_global.weight"].shape[0]) if "classifier_global.weight" in sd else None
    if n_ckpt is not None and cfg and cfg.get("num_classes", n_ckpt) != n_ckpt:
        raise CheckpointError(f"{path} disagrees with itself: its config says num_classes="
                              f"{cfg['num_classes']}, its classifier has {n_ckpt} identities")
    model = HACNN(n_ckpt or num_classes, config=config, **overrides)
    if num_classes is not None and n_ckpt is not None and num_classes != n_ckpt:
        # Different identities: keep the backbone, start new classifiers.
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier_")}
        model.reset_classifier(num_classes)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if unexpected or any(not k.startswith("classifier_") for k in missing):
            raise CheckpointError(f"{path} does not fit HACNN: missing {missing}, unexpected {unexpected}")
        return model
    c = model.config
    load_weights(model, sd, path, f"HACNN(num_classes={c.num_classes}, channels={c.channels}, "
                 f"feat_dim={c.feat_dim}, local_branch={c.local_branch})")
    return model
