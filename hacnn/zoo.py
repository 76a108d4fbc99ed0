"""The model zoo: reference weights trained by the reference protocol, shipped with the package.

``hacnn.pretrained("synthetic-full")`` returns the full HA-CNN trained by
:mod:`hacnn.reference` (:func:`~hacnn.reference.weights_run`) on the
``default`` synthetic benchmark, in eval mode; ``"synthetic-global-only"``
is the global-only baseline of the same protocol. The files are in
``hacnn/weights/``: ``<name>.pt`` holds the weights as fp16 in the hacnn
checkpoint layout (so ``python -m hacnn evaluate --weights`` and
:func:`hacnn.checkpoint.load_model` read them too) and is loaded with
``weights_only=True``; ``<name>.json`` beside it holds the model's config, the
command that made it, the run's provenance and the test metrics of *these*
fp16 weights evaluated in fp32 (what a user gets; the run's own fp32 weights
scored within a few tenths of them). Nothing is downloaded.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# name -> (variant of hacnn.experiment.VARIANTS, what it is)
REFERENCE_WEIGHTS = {
    "synthetic-full": ("full HA-CNN", "full HA-CNN, reference protocol, default synthetic benchmark"),
    "synthetic-global-only": ("global only", "global-only baseline, reference protocol, default "
                                             "synthetic benchmark"),
}


def available() -> dict[str, dict]:
    """The reference weights in this install: name -> their card (``<name>.json``)."""
    return {name: json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
            for name in REFERENCE_WEIGHTS if (WEIGHTS_DIR / f"{name}.pt").is_file()}


def weights_path(name: str) -> Path:
    """The file of the reference weights ``name`` (one clear error when it is not there)."""
    if name not in REFERENCE_WEIGHTS:
        raise ValueError(f"no reference weights named {name!r}; known: {sorted(REFERENCE_WEIGHTS)}")
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"the reference weights {name!r} are not in this install (expected "
                                f"{path}); `python -m hacnn reproduce --reference` makes them")
    return path


def pretrained(name: str = "synthetic-full", device=None) -> torch.nn.Module:
    """The reference model ``name`` (:data:`REFERENCE_WEIGHTS`) in fp32, eval mode, on ``device``."""
    from .checkpoint import load_model

    model = load_model(weights_path(name))
    return model.to(device or "cpu").eval()


def card(name: str) -> dict:
    """The card of the reference weights ``name``: config, command, provenance, test metrics."""
    return json.loads(weights_path(name).with_suffix(".json").read_text())


def exported_from(run: str) -> Path | None:
    """The reference weights exported from the training run folder named ``run``, if any."""
    for name, info in available().items():
        if info.get("provenance", {}).get("run") == run:
            return WEIGHTS_DIR / f"{name}.pt"
    return None


def export_weights(checkpoint, name: str, *, metrics: dict, provenance: dict,
                   out_dir: str | Path = WEIGHTS_DIR) -> Path:
    """Write ``checkpoint`` (a training run's ``last.pth``) as the reference weights ``name``:
    floating-point tensors as fp16, the rest (batch-norm step counts) as they are, and its card
    (``metrics``: those of the fp16 weights; ``provenance``: commit, command, machine, times)."""
    from .checkpoint import FORMAT, VERSION, atomic_save, model_state, safe_load

    if name not in REFERENCE_WEIGHTS:
        raise ValueError(f"no reference weights named {name!r}; known: {sorted(REFERENCE_WEIGHTS)}")
    sd, config = model_state(safe_load(checkpoint))
    if config is None:
        raise ValueError(f"{checkpoint} has no hacnn model config: export a hacnn training run")
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = atomic_save({"format": FORMAT, "version": VERSION, "model": half, "config": config},
                       out / f"{name}.pt")
    info = {"name": name, "variant": REFERENCE_WEIGHTS[name][0], "what": REFERENCE_WEIGHTS[name][1],
            "dtype": "float16", "config": config, "metrics": metrics, "provenance": provenance}
    (out / f"{name}.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    return path


__all__ = ["REFERENCE_WEIGHTS", "WEIGHTS_DIR", "available", "card", "export_weights", "exported_from", "pretrained",
           "weights_path"]
