"""ONNX export of HA-CNN's eval feature graph: images (B, 3, H, W) -> features (B, D).

``python -m hacnn export --weights W --out model.onnx [--opset 18] [--batch 2]``
is :func:`export_onnx`. What is exported is the model of
:func:`hacnn.inference.optimize_for_inference` (batch norms folded, Inception
1x1 convolutions fused), in float32, with a dynamic batch axis: input
``images`` (B, 3, H, W), normalised as the eval transform does (ImageNet mean
and std, :mod:`hacnn.data.transforms`), output ``features`` (B, D), the same
global (+) local feature as ``model.eval()(x)``. The hard-attention crop
(:meth:`hacnn.HardRegionalAttention.crop`) is two batched matmuls with
interpolation matrices built from the predicted translations (floor, compare,
matmul), so it exports as plain ONNX operators and keeps moving with the input.

Exporter: the TorchScript-based one (``torch.onnx.export(..., dynamo=False)``),
default opset :data:`DEFAULT_OPSET`. It needs only ``onnx`` (the ``onnx``
extra: ``pip install -e '.[onnx]'``) and exports in seconds; torch 2.14's
default, the torch.export-based exporter (``dynamo=True``), also exports this
model to the same features but needs ``onnxscript`` and takes ~10x longer.
The file carries metadata (opset, exporter, input size, normalisation,
feature size, hacnn version) and is written atomically (temp file + rename).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .checkpoint import CheckpointError, atomic_path

__all__ = ["export_onnx", "add_export_arguments", "DEFAULT_OPSET", "MAX_OPSET"]

DEFAULT_OPSET = 18
MAX_OPSET = {"torchscript": 20, "dynamo": 23}   # the highest each exporter of torch 2.14 writes


def export_onnx(weights, out, *, opset: int = DEFAULT_OPSET, batch: int = 2, dynamo: bool = False,
                force: bool = False) -> Path:
    """Write the eval feature graph of ``weights`` (checkpoint path or HACNN) to ``out``.

    ``batch``: the batch size of the example input that is traced (the batch
    axis stays dynamic). ``dynamo=True`` uses torch.export-based exporter
    (needs ``onnxscript``). An existing ``out`` is kept unless ``force``.
    """
    try:
        import onnx
    except ImportError:
        raise ModuleNotFoundError("ONNX export needs the onnx package: pip install -e '.[onnx]'") from None

    from . import __version__
    from .checkpoint import load_model
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from .inference import optimize_for_inference
    from .model import HACNN

    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    top = MAX_OPSET["dynamo" if dynamo else "torchscript"]
    if not isinstance(opset, int) or not 11 <= opset <= top or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"expected an opset in 11..{top} and batch >= 1, received opset={opset!r}, "
                         f"batch={batch!r}")
    model = weights if isinstance(weights, torch.nn.Module) else load_model(weights)
    if not isinstance(model, HACNN):
        raise CheckpointError(f"expected an HACNN, received {type(model).__name__}")
    cfg = model.config
    net = optimize_for_inference(model).cpu().float()         # a copy: the model is left as it is
    x = torch.randn(batch, 3, *cfg.input_size, generator=torch.Generator().manual_seed(0))
    with atomic_path(out, suffix=".tmp.onnx") as tmp, warnings.catch_warnings():
        # the TorchScript exporter's deprecation notice; the input-shape check traced as a constant
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        kw = (dict(dynamic_shapes=({0: torch.export.Dim("batch")},)) if dynamo else
              dict(dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}))
        torch.onnx.export(net, (x,), tmp, input_names=["images"], output_names=["features"],
                          opset_version=opset, dynamo=dynamo, external_data=False, **kw)
        proto = onnx.load(tmp)
        meta = {"producer": f"hacnn {__version__}", "exporter": "dynamo" if dynamo else "torchscript",
                "opset": str(opset), "input": f"images (batch, 3, {cfg.input_size[0]}, {cfg.input_size[1]}) "
                "float32, RGB in [0, 1] normalised by mean and std", "mean": json.dumps(IMAGENET_MEAN),
                "std": json.dumps(IMAGENET_STD), "output": f"features (batch, {cfg.feature_dim}) float32",
                "feature_dim": str(cfg.feature_dim), "config": json.dumps(cfg.to_dict())}
        onnx.helper.set_model_props(proto, meta)
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
    return out


def add_export_arguments(p) -> None:
    """``python -m hacnn export`` options."""
    p.add_argument("--weights", type=Path, required=True, help="hacnn or torchreid checkpoint")
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write (atomically)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default: {DEFAULT_OPSET}; TorchScript exporter 11..{MAX_OPSET['torchscript']}, "
                   f"--dynamo up to {MAX_OPSET['dynamo']})")
    p.add_argument("--batch", type=int, default=2, help="batch size of the traced example (the batch "
                   "axis stays dynamic; default: 2)")
    p.add_argument("--dynamo", action="store_true", help="torch.export-based exporter (needs onnxscript)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    path = export_onnx(args.weights, args.out, opset=args.opset, batch=args.batch, dynamo=args.dynamo,
                       force=args.force)
    print(f"wrote {path}: HA-CNN eval features, fp32, opset {args.opset}, dynamic batch axis")
    return 0
