"""Reproducibility: seeding, the kernel path, and RNG / data-loader states that survive ``weights_only`` loading.

A checkpoint stores the states so that a resumed run draws exactly the random
numbers the uninterrupted run would have drawn (``hacnn.training``). Every
state is kept as tensors and plain Python values, since checkpoints load
with ``torch.load(..., weights_only=True)``.

What is reproducible how (measured: ``benchmarks/bench_kernel_spread.py``):
the same seed on the same *kernel path* (:func:`kernel_path`: torch version,
CPU model and instruction set, oneDNN's ISA limit, thread count; on CUDA the
card and CUDA version) gives the same numbers bit for bit, reruns and
``--resume`` included. Another kernel path rounds float sums in another
order, the run follows another trajectory, and its numbers agree only within
a band (``hacnn.bands``).
"""
from __future__ import annotations

import os
import platform
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (all devices); ``deterministic`` pins cuDNN algorithms.

    On CPU, training is then bitwise reproducible for a fixed thread count.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what ``platform`` says)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def kernel_path(device: str | torch.device = "cpu") -> dict:
    """What decides the float rounding of a run besides its settings (a run-cache key part).

    CPU: torch version, CPU model, ATen's vector ISA (``ATEN_CPU_CAPABILITY``
    can lower it), oneDNN's ISA limit (``ONEDNN_MAX_CPU_ISA``) and the number
    of intra-op threads (each thread sums its own share). CUDA: torch and
    CUDA versions and the card's name.
    """
    device = torch.device(device)
    path = {"torch": torch.__version__, "device": device.type}
    if device.type == "cuda":
        path.update(cuda=torch.version.cuda,
                    card=torch.cuda.get_device_name(device) if torch.cuda.is_available() else None)
    else:
        isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
        path.update(cpu=cpu_model(), aten_isa=torch.backends.cpu.get_cpu_capability(),
                    onednn_max_isa=isa.upper() if isa else None, threads=torch.get_num_threads())
    return path


def get_rng_state() -> dict:
    """torch (CPU + CUDA), numpy and python RNG states as tensors and plain values."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss"]))


def _generators(loader) -> dict[str, torch.Generator]:
    """The torch generators a loader draws from (its own, its sampler's, its dataset's)."""
    owners = {"loader": loader, "sampler": getattr(loader, "sampler", None),
              "dataset": getattr(loader, "dataset", None)}
    return {name: obj.generator for name, obj in owners.items()
            if isinstance(getattr(obj, "generator", None), torch.Generator)}


def get_data_state(loader) -> dict:
    """Generator states and the sampler's ``(epoch, seed)`` of a training loader."""
    sampler = getattr(loader, "sampler", None)
    state = {"generators": {k: g.get_state() for k, g in _generators(loader).items()}}
    if hasattr(sampler, "set_epoch"):
        state["sampler"] = {"epoch": int(getattr(sampler, "epoch", 0)),
                            "seed": int(getattr(sampler, "seed", 0))}
    return state


def set_data_state(loader, state: dict) -> None:
    """Inverse of :func:`get_data_state` (generators missing on either side are skipped)."""
    for name, gen in _generators(loader).items():
        if name in state["generators"]:
            gen.set_state(state["generators"][name])
    sampler = getattr(loader, "sampler", None)
    if "sampler" in state and hasattr(sampler, "set_epoch"):
        if hasattr(sampler, "seed"):
            sampler.seed = state["sampler"]["seed"]
        sampler.set_epoch(state["sampler"]["epoch"])
