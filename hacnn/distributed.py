"""Multi-process training: torchrun's environment, the process group, DDP and SyncBatchNorm.

Launch one process per device with torchrun (``python -m torch.distributed.run``)::

    torchrun --nproc_per_node 4 -m hacnn train --dataset market1501 --root ~/data --sync-bn
    # two machines (run on each, --node_rank 0 on the one at --master_addr):
    torchrun --nnodes 2 --node_rank 0 --master_addr host0 --master_port 29500 \\
        --nproc_per_node 8 -m hacnn train ...

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_from_env` reads them and joins the process group
(NCCL on CUDA, gloo on CPU), each process on ``cuda:LOCAL_RANK``
(:func:`local_device`). Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``)
everything here is a no-op and training runs in one process as before.

The rules of a multi-process run (``hacnn.training.Trainer``):

* ``--batch-size`` is the **global** batch, P identities x K images, the same
  for every number of processes. The identity sampler draws the same epoch
  plan (its list of global batches, a function of ``(seed, epoch)``) for any
  world size; process ``r`` of ``W`` takes images ``r*B/W .. (r+1)*B/W - 1``
  of every global batch (:func:`shard_size`; the world size must divide the
  batch). Augmentation is keyed by ``(seed, epoch, position in the global
  epoch, image)`` (:mod:`hacnn.data.loading`), so it does not depend on W.
* The learning rate is given for the global batch and is **not** scaled with
  the number of processes: the global batch does not change with it, so a
  recipe trains the same on 1 or 8 processes. To use more devices for a
  larger batch, raise ``--batch-size`` and choose ``--lr`` yourself (the
  linear scaling rule, lr x k for batch x k, is the usual first guess).
* Each process averages the loss over its shard and DDP averages the
  gradients over the processes: with equal shards this is the gradient of
  the global batch's mean loss. With ``--sync-bn`` batch norm normalises
  with the global batch's statistics too, and a W-process run trains like
  one process on the same global batch, up to float summation order. Without
  it each process normalises its shard alone (the usual DDP behaviour).
* Rank 0 alone writes logs and checkpoints and runs the evaluation; the
  logged losses and accuracies are sums over all processes. Checkpoints hold
  the bare model (no ``module.`` prefix): a checkpoint of a W-process run
  loads in one process and resumes on any number of processes (the same
  plan continues; bitwise only on the same world size).
* A process that does not join within the timeout (:data:`TIMEOUT_ENV`,
  default 30 min, PyTorch's) stops with :class:`DistributedInitError` naming
  the rendezvous endpoint; a process that dies makes torchrun stop the job.
  The run folder and the data must be reachable by every process (a shared
  filesystem across machines); rank 0 generates a missing synthetic
  benchmark first, so on several machines run ``python -m hacnn synth`` first.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_ENV = "HACNN_DIST_TIMEOUT"      # seconds: joining the group, and any collective
DEFAULT_TIMEOUT_S = 1800.0
LAUNCH_HINT = "launch with `torchrun --nproc_per_node N -m hacnn train ...`, which sets " + ", ".join(ENV_VARS)


class DistributedInitError(RuntimeError):
    """The multi-process environment is incomplete or the process group did not form."""


# ----------------------------------------------------------------------------- environment

def env_world(env=None) -> dict | None:
    """``{rank, world_size, local_rank, master_addr, master_port}`` from torchrun's variables.

    None when ``WORLD_SIZE`` is unset or 1 (a single-process run). A
    multi-process ``WORLD_SIZE`` with any other variable missing or malformed
    is a :class:`DistributedInitError` that names it.
    """
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE", "1") in ("", "1"):
        return None
    missing = [name for name in ENV_VARS if not env.get(name)]
    if missing:
        raise DistributedInitError(
            f"the environment describes a multi-process run (WORLD_SIZE={env['WORLD_SIZE']}) but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set "
            f"(the rendezvous endpoint is MASTER_ADDR:MASTER_PORT); {LAUNCH_HINT}")
    try:
        rank, world, local = (int(env[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        port = int(env["MASTER_PORT"])
    except ValueError:
        raise DistributedInitError(
            "RANK, WORLD_SIZE, LOCAL_RANK and MASTER_PORT must be integers; got "
            + ", ".join(f"{k}={env[k]!r}" for k in ENV_VARS if k != "MASTER_ADDR")) from None
    if world < 1 or not 0 <= rank < world or local < 0 or not 0 < port < 65536:
        raise DistributedInitError(f"inconsistent environment: RANK={rank}, WORLD_SIZE={world}, "
                                   f"LOCAL_RANK={local}, MASTER_PORT={port}")
    return {"rank": rank, "world_size": world, "local_rank": local,
            "master_addr": env["MASTER_ADDR"], "master_port": port}


def local_device(device: torch.device, env=None) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` for a multi-process CUDA run.

    ``device`` is kept when it names an index (``cuda:1``), is not CUDA, or
    the run has one process.
    """
    world = env_world(env)
    if world is None or device.type != "cuda" or device.index is not None:
        return device
    local, count = world["local_rank"], torch.cuda.device_count()
    if local >= count:
        raise DistributedInitError(
            f"LOCAL_RANK={local} but this machine has {count} visible CUDA device(s): "
            f"--nproc_per_node must not exceed the GPUs per machine")
    return torch.device("cuda", local)


def timeout_s(env=None) -> float:
    """Seconds to wait for the other processes (``$HACNN_DIST_TIMEOUT``, default 1800)."""
    env = os.environ if env is None else env
    raw = env.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedInitError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


# ----------------------------------------------------------------------------- the process group

def init_from_env(device: torch.device | str = "cpu", timeout: float | None = None) -> torch.device:
    """Join torchrun's process group (if the environment describes one); returns this process's device.

    NCCL when ``device`` is CUDA, else gloo. Idempotent (an initialised group
    is kept). Ends with a barrier, so on return every process has joined; if
    they have not within ``timeout`` seconds (default :func:`timeout_s`), or
    the endpoint cannot be reached, a :class:`DistributedInitError` names
    the endpoint and the timeout.
    """
    device = local_device(torch.device(device))
    world = env_world()
    if world is None or dist.is_initialized():
        return device
    timeout = timeout_s() if timeout is None else timeout
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    endpoint = f"{world['master_addr']}:{world['master_port']}"
    try:
        dist.init_process_group(backend, init_method="env://", rank=world["rank"],
                                world_size=world["world_size"],
                                timeout=datetime.timedelta(seconds=timeout))
        barrier()
    except Exception as e:  # noqa: BLE001 - torch raises several types (store, network, timeout)
        if dist.is_initialized():
            dist.destroy_process_group()
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise DistributedInitError(
            f"rank {world['rank']} of {world['world_size']}: the process group ({backend}) did not "
            f"form at the rendezvous endpoint {endpoint} (MASTER_ADDR:MASTER_PORT) within {timeout:g} s: "
            f"another process failed to start or join, or the endpoint is unreachable. Set "
            f"{TIMEOUT_ENV} (seconds) to wait longer. ({reason})") from None
    return device


def cleanup() -> None:
    """Leave the process group (if one is up)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Rank 0 (or a single-process run): the process that logs, evaluates and writes files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single-process run)."""
    if get_world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. generates the data), then the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums of ``values`` over all processes (float64; unchanged in one process)."""
    if get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.tolist()


def from_main(value):
    """Rank 0's ``value`` (any picklable object) on every process: one decision for all."""
    if get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(fn: Callable):
    """``fn()`` on rank 0 only; its result on every process (the others wait)."""
    return from_main(fn() if is_main() else None)


def gather_to_main(value) -> list | None:
    """Every process's ``value`` as a list on rank 0 (None elsewhere, and in one process)."""
    if get_world_size() == 1:
        return None
    out = [None] * get_world_size() if is_main() else None
    dist.gather_object(value, out, dst=0)
    return out


# ----------------------------------------------------------------------------- batches and models

def shard_size(global_batch: int, world_size: int) -> int:
    """Images per process of a global batch; a clear error if it cannot be split evenly."""
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if world_size > global_batch:
        raise ValueError(
            f"{world_size} processes but a global batch of {global_batch} images: every process needs "
            f"a share of each batch; use at most {global_batch} processes or a larger --batch-size")
    if global_batch % world_size:
        up = -(-global_batch // world_size) * world_size
        raise ValueError(
            f"the world size ({world_size} processes) must divide the global batch ({global_batch} "
            f"images; --batch-size is split evenly over the processes): e.g. --batch-size {up}")
    return global_batch // world_size


def check_batch(global_batch: int, sync_bn: bool, world_size: int | None = None) -> int:
    """:func:`shard_size`, and batch norm needs 2+ images per process unless it is synchronised."""
    world_size = get_world_size() if world_size is None else world_size
    per_rank = shard_size(global_batch, world_size)
    if per_rank == 1 and world_size > 1 and not sync_bn:
        raise ValueError(f"a global batch of {global_batch} over {world_size} processes leaves 1 image "
                         "per process, too few for batch norm; pass --sync-bn, or use fewer processes")
    return per_rank


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient is summed too (every process's loss uses the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


class _AllGather(torch.autograd.Function):
    """Every process's equal-sized share, concatenated in rank order along dim 0.

    Every process's loss may use every row, so the gradient of a process's own
    rows is the sum over the processes of their gradients for those rows.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_batch(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(rows of every process's share of the batch, offset of this process's rows)``.

    Differentiable (:class:`_AllGather`); in one process ``(x, 0)``. The batch-hard
    triplet loss mines its positives and negatives over the global batch through it
    (:func:`hacnn.losses.batch_hard_triplet`).
    """
    if get_world_size() == 1:
        return x, 0
    return _AllGather.apply(x), get_rank() * x.shape[0]   # without a gradient: a plain all-gather


class GlobalBatchNorm(_BatchNorm):
    """Batch norm with the statistics of the global batch, on any device and backend.

    torch's :class:`~torch.nn.SyncBatchNorm` (used on CUDA) refuses CPU
    tensors; this does the same arithmetic with one differentiable all-reduce
    of the per-channel ``(sum, sum of squares, count)`` in float64 per
    forward (its backward sums the gradients over the processes). Outside a
    multi-process training step it is a plain batch norm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected a (B, C, ...) input, got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c, dims = x.shape[1], [0, *range(2, x.dim())]
        xd = x.double()
        stats = torch.cat([xd.sum(dims), (xd * xd).sum(dims), xd.new_tensor([x.numel() / c])])
        stats = _AllReduceSum.apply(stats)                         # (2C + 1,) over all processes
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)      # biased, as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).to(self.running_var.dtype), m)
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def check_sync_bn(sync_bn: bool, per_region_bn: bool) -> None:
    """Refuse ``sync_bn`` with the local stream's per-region batch norms (``HACNNConfig.local_bn``)."""
    if sync_bn and per_region_bn:
        raise ValueError("--sync-bn (sync_bn) normalises the batch norms over the global batch and "
                         "local_bn='per_region' over each region of a process's batch: they cannot both "
                         "hold; drop one")


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Every batch norm of ``model`` normalised over the global batch (SyncBatchNorm on CUDA)."""
    from .blocks import RegionBatchNorm2d

    check_sync_bn(True, any(isinstance(m, RegionBatchNorm2d) for m in model.modules()))
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global_bn(model)


def _to_global_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        state = list(module.state_dict().values())
        return new.to(state[0].device) if state else new
    for name, child in module.named_children():
        module.add_module(name, _to_global_bn(child))
    return module


def wrap_model(model: nn.Module, device: torch.device, sync_bn: bool = False) -> tuple[nn.Module, nn.Module]:
    """``(model, net)``: ``net`` runs the training forward (DDP in a multi-process run).

    ``model`` is the bare network (batch norms synchronised if ``sync_bn``):
    what is saved, evaluated and optimised. In one process both are ``model``
    (``sync_bn`` changes nothing there: the batch is the global batch).
    """
    if get_world_size() == 1:
        return model, model
    if sync_bn:
        model = convert_sync_bn(model, device)
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, net
