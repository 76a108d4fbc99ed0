"""Training HA-CNN: optimiser and schedule, AMP, checkpoints, exact resume, logs.

The model is trained from scratch on the identity cross-entropy of both
heads (paper Sec. 3.3, :mod:`hacnn.losses`), by default with a batch-hard
triplet loss added to each (not in the paper). The paper's optimiser settings
were not published; :data:`hacnn.config.RECIPES` holds known working
recipes and :class:`hacnn.config.TrainConfig` explains the default
(``adam-triplet``: Adam 3e-4 plus the triplet loss).
The learning rate follows a plan of the whole run, stepped per optimisation
step (:mod:`hacnn.schedule`: constant, step, cosine, one-cycle; a time
budget measured, planned, and measured once more before its plan is final).

A run folder holds ``last.pth`` (written after every epoch), ``best.pth``
(best mAP so far), ``log.csv`` and ``log.json``. Checkpoints are written
atomically and carry everything a run needs to continue bit for bit on the
same machine: model, optimiser, the run's plan and step count, grad scaler,
the torch / numpy / python RNG states, the data loader's generators and
sampler epoch, and the history. They load with ``weights_only=True``, so every state is stored as
tensors and plain Python values.

Exact resumption holds for loaders whose randomness lives in the main
process or is a function of ``(seed, epoch, draw)``: the identity sampler and
the augmentation of :func:`hacnn.data.build_train_loader`, with any number of
workers. A custom loader whose workers hold their own random streams
restarts those streams on resume.

Under torchrun it trains with DDP (:mod:`hacnn.distributed`: global batch, lr
rule, SyncBatchNorm); rank 0 alone logs, evaluates and writes checkpoints.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import FORMAT, VERSION, CheckpointError, atomic_save, load_weights, safe_load
from .config import TrainConfig
from .logging_utils import CSV_NAME, EVAL_COLUMNS, JSON_NAME, rss_mb, write_logs
from .losses import HACNNLoss
from .reproducibility import get_data_state, get_rng_state, seed_everything, set_data_state, set_rng_state
from .schedule import build_scheduler, lr_at, make_plan, plan_budget, refine_budget

LAST, BEST = "last.pth", "best.pth"
RUN_JSON = "run.json"                # what the run was trained on (written by hacnn.experiment)
TRAINER_FILES = (LAST, BEST, CSV_NAME, JSON_NAME)
RUN_FILES = TRAINER_FILES + (RUN_JSON,)
_AMP_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; training stopped, ``last.pth`` kept."""


class RunExistsError(FileExistsError):
    """The output folder already holds a run (resume it or force an overwrite)."""


# ----------------------------------------------------------------------------- setup helpers

def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` picks CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def native_bf16(device: str | torch.device | None = None) -> bool:
    """Whether ``device`` computes in bf16 natively (inference uses bf16 weights there).

    CUDA: a GPU with bf16 arithmetic (compute capability 8.0+). CPU: the
    AVX-512 BF16 or AMX-BF16 instructions (on Linux read from /proc/cpuinfo,
    elsewhere oneDNN's bf16 check). Elsewhere bf16 is emulated and slower than
    fp32. Whether bf16 autocast also *trains* faster is another question:
    :func:`bf16_training_pays`.
    """
    device = resolve_device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return False
    flags = _cpuinfo_words()
    if flags is None:
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(check()) if check is not None else False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _cpuinfo_words() -> set[str] | None:
    """The words of /proc/cpuinfo (its flags and vendor id), None where it cannot be read."""
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None


def bf16_training_pays(device: str | torch.device | None = None, cpuinfo: str | None = None) -> bool:
    """Whether bf16 autocast *trains* this model faster than fp32 + channels_last on ``device``.

    Native bf16 is not enough. Measured training steps (benchmarks/bench_training.py, 2 cores,
    benchmarks/README.md): an AMD EPYC with AVX-512 BF16, 59.0 vs 37.3 img/s (1.58x); an Intel
    Xeon with AVX-512 BF16 but no AMX exposed, 27.3 vs 33.6 img/s (0.81x: oneDNN's AVX-512 BF16
    convolution backward is slower than its fp32 one there). So: AVX-512 BF16 on an AMD CPU, the
    one place it was measured to pay; never on CUDA (launch-bound at batch 32-64 on an H200).
    Intel's AMX-BF16 was never measured here and is not assumed to pay (until 2026-12-02 it was:
    a CI machine that trained in bf16 by that rule got NaN losses in tiny test runs that train in
    fp32 elsewhere); ``amp="bf16"`` still selects it.
    ``cpuinfo``: the text of /proc/cpuinfo (read when None; elsewhere :func:`native_bf16` decides).
    """
    device = resolve_device(device)
    if device.type != "cpu":
        return False
    flags = _cpuinfo_words() if cpuinfo is None else set(cpuinfo.split())
    if flags is None:
        return native_bf16(device)
    return "avx512_bf16" in flags and "AuthenticAMD" in flags


def resolve_amp(amp: str | None, device: str | torch.device | None = None) -> str | None:
    """``TrainConfig.amp`` for ``device``: ``"auto"`` becomes ``"bf16"`` on a CPU
    where bf16 autocast trains faster (:func:`bf16_training_pays`) and None (fp32)
    elsewhere, CUDA included (autocast was slower there for this model at batch
    32-64 on an H200, benchmarks/README.md); ``"none"`` becomes None; others are kept.
    """
    if amp == "auto":
        device = resolve_device(device)
        return "bf16" if device.type == "cpu" and bf16_training_pays(device) else None
    return None if amp == "none" else amp


def prepare_run_folder(out_dir: str | Path, *, resume: bool = False, force: bool = False,
                       files: tuple[str, ...] = RUN_FILES, check_only: bool = False) -> Path:
    """Check ``out_dir`` before a run: never overwrite a run without ``resume`` or ``force``.

    ``resume`` needs ``out_dir/last.pth``; ``force`` deletes the previous
    run's ``files`` (only those: other files in the folder are left alone).
    ``check_only`` raises what a real call would raise but changes nothing
    (no folder made, no file deleted), so a caller can fail early.
    """
    out = Path(out_dir)
    existing = [name for name in files if (out / name).exists()]
    if resume:
        if not (out / LAST).is_file():
            raise FileNotFoundError(f"cannot resume: {str(out)!r} holds no {LAST}")
        return out
    if existing and not force:
        raise RunExistsError(
            f"output folder {str(out)!r} already holds a run ({', '.join(existing)}); "
            "pass --resume to continue it or --force to overwrite it")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output folder {str(out)!r} is a file, not a folder")
    if check_only:
        return out
    for name in existing:
        (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or Adam (beta1 = ``cfg.momentum``) with L2 weight decay, as torchreid.

    The update is PyTorch's fused kernel (``fused=True``: one pass over all
    parameters) where the parameters' device has one (CPU and CUDA among
    them), the same algorithm as the default per-parameter loop: Adam's step
    on HA-CNN's 3.1M parameters takes 3.6 instead of 11.2 ms on 2 CPU cores,
    about 1.5 % of a training step (``benchmarks/README.md``, "Where the training
    step's time goes").
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {p.device.type for p in params} <= set(_fused_devices())
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               fused=fused or None)
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.momentum, 0.999), weight_decay=cfg.weight_decay,
                            fused=fused or None)


def _fused_devices() -> list[str]:
    """Device types with fused optimizer kernels in this PyTorch build."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    return _get_fused_kernels_supported_devices()


def make_evaluator(query_loader, gallery_loader, *, device=None, flip: bool = False,
                   rerank: bool = False, protocol: str = "market",
                   progress: bool = False) -> Callable[[nn.Module], dict]:
    """``model -> metrics dict`` (Rank-k, mAP, mINP) on a query/gallery split."""
    from .evaluation import evaluate_model

    def evaluate(model: nn.Module) -> dict:
        return evaluate_model(model, query_loader, gallery_loader, device=device, flip=flip,
                              rerank=rerank, protocol=protocol, progress=progress).row()
    return evaluate


# ----------------------------------------------------------------------------- trainer

class Trainer:
    """Train an :class:`hacnn.HACNN` (paper Sec. 3.3: cross-entropy on both heads).

    Args:
        model: the network (moved to ``device``).
        train_loader: batches ``(images, pids, ...)``; a sampler with
            ``set_epoch`` gets the epoch number before each epoch.
        config: :class:`TrainConfig` (recipe, schedule, AMP, seed, ...).
        out_dir: run folder for checkpoints and logs.
        evaluator: ``model -> dict`` with at least ``"mAP"`` (see
            :func:`make_evaluator`); run every ``config.eval_every`` epochs
            and after the last; ``best.pth`` follows its mAP.
        device: ``torch.device`` or string; None = CUDA if available
            (``cuda:LOCAL_RANK`` in a multi-process run).
        progress: tqdm progress bars (loss and accuracy so far).
        verbose: one summary line per epoch (default: same as ``progress``).
        overwrite: allow a fresh run over a folder that holds one.

    ``fit()`` seeds everything from ``config.seed`` (unless resumed) and
    trains to the end of the plan (``config.epochs``, or what
    ``config.time_budget`` holds, :mod:`hacnn.schedule`); ``resume()``
    restores a ``last.pth`` and continues its saved plan.
    """

    def __init__(self, model: nn.Module, train_loader, config: TrainConfig | None = None,
                 out_dir: str | Path = "runs/hacnn", *, evaluator: Callable | None = None,
                 device: str | torch.device | None = None, progress: bool = True,
                 verbose: bool | None = None, overwrite: bool = False):
        self.device = distributed.local_device(resolve_device(device))
        cfg = config or TrainConfig()
        self.config = cfg = replace(cfg, amp=resolve_amp(cfg.amp, self.device))   # "auto" resolved
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise ValueError(f"amp='fp16' needs a CUDA device (got {self.device}); use amp='bf16' on CPU")
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        # model: the bare network (saved, evaluated, optimised); net: DDP(model) under torchrun
        self.model, self.net = distributed.wrap_model(
            model.to(self.device, memory_format=self.memory_format), self.device, cfg.sync_bn)
        # forward: what the training step calls (compiled on its first call when cfg.compile)
        self.forward = torch.compile(self.net) if cfg.compile else self.net
        self.train_loader = train_loader
        self.out_dir = Path(out_dir)
        self.evaluator = evaluator
        self.progress = progress and distributed.is_main()
        self.verbose = (progress if verbose is None else verbose) and distributed.is_main()
        self.overwrite = overwrite
        self.criterion = HACNNLoss(cfg.label_smoothing, triplet_weight=cfg.triplet_weight,
                                   triplet_margin=cfg.triplet_margin,
                                   gather=distributed.gather_batch if distributed.get_world_size() > 1 else None)
        self.optimizer = build_optimizer(self.model, cfg)
        self.steps_per_epoch = _length(train_loader)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)  # .plan: the run
        self.step = 0                       # completed optimisation steps
        self._step_ends: list[float] = []   # time-budget measurement: clock at each step's end
        self._start = time.perf_counter()   # the budget's start (reset by fit)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.amp_dtype = _AMP_DTYPES[cfg.amp]
        self.epoch = 0                      # completed epochs
        self.history: list[dict] = []
        self.best_map = -math.inf
        self.best_epoch: int | None = None
        self._resumed = False

    # -- one epoch ----------------------------------------------------------

    def train_epoch(self) -> dict:
        """One pass over the training loader; returns the epoch's log row (no eval)."""
        cfg, dev = self.config, self.device
        epoch = self.epoch + 1
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self.model.train()
        n = 0
        loss_sum = loss_g_sum = loss_l_sum = correct_g = correct_l = 0.0
        start = time.perf_counter()
        # One iter() per epoch: tqdm.auto (the asyncio flavour) calls iter() on what it wraps and
        # then iterates it again, and each iter() of a persistent-worker loader starts a new pass
        # (the sampler advances an epoch), so the loader itself must not be handed to tqdm.
        batches = iter(self.train_loader)
        bar = tqdm(batches, total=_length(self.train_loader), desc=f"epoch {epoch}/{self.plan['epochs']}",
                   leave=False, disable=not self.progress, dynamic_ncols=True)
        for it, batch in enumerate(bar, 1):
            # A plan that ends inside an epoch (time budget) stops before the next step; an epoch that
            # ends with the plan runs its loader out, so the loader's state is that of any epoch's end.
            if self.plan["total_steps"] is not None and self.step >= self.plan["total_steps"]:
                break
            images = batch[0].to(dev, non_blocking=True, memory_format=self.memory_format)
            pids = torch.as_tensor(batch[1]).to(dev, non_blocking=True)   # (B,)
            with torch.autocast(dev.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self.forward(images)                                  # HACNNOutput
            loss = self.criterion(out, pids)
            b, has_local = len(pids), loss.local_loss is not None
            # this step's sums over the global batch (all processes): one decision on a NaN for all
            step = distributed.sum_over_ranks([
                loss.total.item() * b, loss.global_loss.item() * b,
                (out.global_logits.argmax(1) == pids).sum().item(),
                loss.local_loss.item() * b if has_local else 0.0,
                (out.local_logits.argmax(1) == pids).sum().item() if has_local else 0.0, b])
            if not math.isfinite(step[0]):
                self._stop(f"non-finite loss ({step[0] / step[-1]}) at epoch {epoch}, iteration {it}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss.total).backward()
            if cfg.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)  # of all-reduced grads
                if not self.scaler.is_enabled() and not torch.isfinite(norm):
                    self._stop(f"non-finite gradient norm ({norm.item()}) at epoch {epoch}, iteration {it}")
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss_sum, loss_g_sum, correct_g, loss_l_sum, correct_l, n = (
                a + s for a, s in zip((loss_sum, loss_g_sum, correct_g, loss_l_sum, correct_l, n), step))
            bar.set_postfix(loss=f"{loss_sum / n:.3f}", acc=f"{100 * correct_g / n:.1f}%", refresh=False)
            lr = self.optimizer.param_groups[0]["lr"]        # this step's (the log shows the last)
            self._after_step()
        if n == 0:
            raise ValueError("the training loader yielded no batch (fewer images than one batch?)")
        elapsed = time.perf_counter() - start
        nan = float("nan")
        return {"epoch": epoch, "loss": loss_sum / n, "loss_global": loss_g_sum / n,
                "loss_local": loss_l_sum / n if has_local else nan,
                "acc_global": correct_g / n, "acc_local": correct_l / n if has_local else nan,
                "lr": lr, "epoch_time_s": elapsed, "images_per_s": n / elapsed, "rss_mb": rss_mb()}

    def evaluate(self) -> dict:
        """Run the evaluator; returns the evaluation columns of the log."""
        if self.evaluator is None:
            raise ValueError("Trainer has no evaluator (pass evaluator=make_evaluator(...))")
        start = time.perf_counter()
        metrics = self.evaluator(self.model)
        metrics = metrics.row() if hasattr(metrics, "row") else dict(metrics)
        self.model.train()
        row = {k: float(metrics[k]) for k in EVAL_COLUMNS if k in metrics}
        row["eval_time_s"] = time.perf_counter() - start
        return row

    # -- the run ------------------------------------------------------------

    @property
    def plan(self) -> dict:
        """The run's plan (:func:`hacnn.schedule.make_plan`): length, warm-up, milestones."""
        return self.scheduler.plan

    def _after_step(self) -> None:
        """Count the step, plan a time budget (after its measurement, and once more), set the next lr."""
        self.step += 1
        plan, cfg = self.plan, self.config
        if cfg.time_budget is not None and (plan["total_steps"] is None or plan.get("refine_at")):
            self._step_ends.append(time.perf_counter())
            if plan["total_steps"] is None and self.step == plan["offset"]:
                self._fix_plan(lambda: plan_budget(cfg, self.steps_per_epoch, self._step_ends, self._start),
                               "time budget")
            elif self.step == plan.get("refine_at"):
                self._fix_plan(lambda: refine_budget(cfg, plan, self._step_ends, self._start),
                               f"re-measured over {self.step} steps")
        self.scheduler.step()

    def _fix_plan(self, planner, what: str) -> None:
        """The plan ``planner()`` returns, made on the main process, for every process."""
        def plan_on_main() -> tuple[dict | None, ValueError | None]:
            try:
                return planner(), None
            except ValueError as e:      # e.g. BudgetError: raised on every process, not only rank 0
                return None, e
        plan, error = distributed.run_on_main(plan_on_main)                # one plan for every process
        if error is not None:
            self._write_logs("stopped", str(error))
            raise error
        self.scheduler.plan = plan
        self._print(f"{what}: {plan['time_budget_s']:g} s at {plan['step_time_s']:.3g} s/step: "
                    f"{plan['total_steps']} steps, {plan['epochs']} epochs (ends by {plan['bound']})")

    def _should_eval(self, epoch: int) -> bool:
        every = self.config.eval_every          # under a time budget: the last epoch only
        if self.evaluator is None or every == 0:
            return False
        return epoch == self.plan["epochs"] or (self.config.time_budget is None and epoch % every == 0)

    def fit(self) -> list[dict]:
        """Train from ``self.epoch`` to the plan's end; returns the per-epoch history."""
        cfg = self.config
        if self.epoch == 0 and not self._resumed:
            prepare_run_folder(self.out_dir, force=self.overwrite, files=TRAINER_FILES, check_only=True)
            distributed.barrier()                  # every process checked before rank 0 writes
            if distributed.is_main():
                prepare_run_folder(self.out_dir, force=self.overwrite, files=TRAINER_FILES)
            seed_everything(cfg.seed + distributed.get_rank(), cfg.deterministic)
        self._write_logs("running")
        precision = f"{cfg.amp} autocast" if cfg.amp else "fp32"
        layout = "channels_last" if cfg.channels_last else "NCHW"
        if self.epoch < self.plan["epochs"]:
            world = distributed.get_world_size()
            where = f"{world} processes ({self.device.type})" if world > 1 else self.device
            self._print(f"training on {where} in {precision}, {layout}: epochs {self.epoch + 1}-"
                        f"{self.plan['epochs']}" + (f" (time budget {cfg.time_budget:g} s; the first "
                        f"{self.plan['offset']} steps measure the throughput at lr 0)"
                        if self.plan["total_steps"] is None and cfg.time_budget else ""))
            cache = getattr(self.train_loader, "cache", None)          # hacnn.data.tensor_cache
            if cache is not None:
                self._print(f"training images decoded once into {cache.device} memory "
                            f"({cache.nbytes / 2**20:.0f} MiB in {cache.build_s:.1f} s)")
        self._start = time.perf_counter()
        while self.epoch < self.plan["epochs"]:
            row = self.train_epoch()
            if self._should_eval(row["epoch"]):
                row.update(distributed.run_on_main(self.evaluate))     # rank 0 evaluates
            self.epoch = row["epoch"]
            self.history.append(row)
            improved = "mAP" in row and row["mAP"] > self.best_map
            if improved:
                self.best_map, self.best_epoch = row["mAP"], self.epoch
            payload = self.state_dict()
            if distributed.is_main():
                atomic_save(payload, self.out_dir / LAST)
                if improved:
                    atomic_save(payload, self.out_dir / BEST)
            self._write_logs("running")
            self._print(_summary(row, self.plan["epochs"]))
        self._write_logs("finished")
        return self.history

    def _stop(self, what: str) -> None:
        last = self.out_dir / LAST
        kept = (f"the last good checkpoint is {last} (epoch {self.epoch})" if self.epoch and last.is_file()
                else "no checkpoint had been written yet")
        message = (f"{what}: training stopped; {kept}. Try a lower learning rate (--lr), "
                   "gradient clipping (--grad-clip) or no AMP.")
        self._write_logs("stopped", message)
        raise NonFiniteLossError(message)

    def _print(self, line: str) -> None:
        if self.verbose:
            tqdm.write(line)

    def _write_logs(self, status: str, message: str = "") -> None:
        if not distributed.is_main():
            return
        model_cfg = self.model.config.to_dict() if hasattr(self.model, "config") else None
        write_logs(self.out_dir, self.history, status=status, message=message,
                   model_config=model_cfg, train_config=self.config.to_dict(), plan=self.plan)

    # -- checkpoints --------------------------------------------------------

    def state_dict(self) -> dict:
        """A hacnn checkpoint (``load_model`` reads it) plus the training state under ``"train"``.

        Under DDP every process calls it (rank 0 gathers all RNG states).
        """
        rng = get_rng_state()
        rng_ranks = distributed.gather_to_main(rng)
        return {
            "format": FORMAT, "version": VERSION,
            "config": self.model.config.to_dict() if hasattr(self.model, "config") else None,
            "model": self.model.state_dict(),
            "train": {
                "epoch": self.epoch, "step": self.step, "plan": dict(self.plan),
                "config": self.config.to_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng,
                "data": get_data_state(self.train_loader), "history": self.history,
                "best_map": self.best_map, "best_epoch": self.best_epoch,
                "world_size": distributed.get_world_size(),
                **({"rng_ranks": rng_ranks} if rng_ranks else {}),
            },
        }

    def resume(self, checkpoint: str | Path | dict | None = None) -> int:
        """Restore a checkpoint (default ``out_dir/last.pth``); returns the completed epochs.

        The run continues the checkpoint's plan (a time budget is not measured
        again, and keeps its plan whatever ``epochs``), except that an
        epoch-bounded run given other ``epochs`` is planned anew for them (a
        warning says so if that moves the learning rate). A checkpoint from
        before plans were saved is planned from its config.
        """
        path = self.out_dir / LAST if checkpoint is None else checkpoint
        ckpt = path if isinstance(path, dict) else safe_load(path)
        train = ckpt.get("train") if isinstance(ckpt, dict) else None
        if train is None:
            raise CheckpointError(f"{path} holds weights only, no training state: it cannot be resumed")
        saved = TrainConfig.from_dict(train["config"])
        changed = {k for k, v in saved.to_dict().items() if self.config.to_dict()[k] != v}
        if changed - {"epochs", "eval_every", "workers", "time_budget", "data_cache"}:
            warnings.warn(f"resuming with settings that differ from the checkpoint's: {sorted(changed)}",
                          stacklevel=2)
        load_weights(self.model, ckpt["model"], "the checkpoint" if isinstance(path, dict) else path,
                     "this model")
        self.optimizer.load_state_dict(train["optimizer"])
        self.scaler.load_state_dict(train["scaler"])
        world, saved_world = distributed.get_world_size(), int(train.get("world_size", 1))
        ranks = train.get("rng_ranks") or [train["rng"]]
        set_rng_state(ranks[distributed.get_rank()] if len(ranks) == world else train["rng"])
        if saved_world != world:
            self._print(f"resuming a run of {saved_world} process(es) on {world}: the same global batches "
                        "and learning rate (bitwise only on the same number of processes)")
        set_data_state(self.train_loader, train["data"])
        self.epoch = int(train["epoch"])
        self.step = int(train.get("step", self.epoch * (self.steps_per_epoch or 0)))  # older: whole epochs
        plan = train.get("plan")
        if plan is None or (plan["time_budget_s"] is None and plan["epochs"] != self.config.epochs):
            new, peak = make_plan(self.config, self.steps_per_epoch), self.config.lr
            if plan is not None and lr_at(self.step, plan, peak) != lr_at(self.step, new, peak):
                warnings.warn(f"epochs changed from {plan['epochs']} to {new['epochs']}: the "
                              f"{new['schedule']} schedule is planned anew and the learning rate "
                              f"moves at step {self.step}", stacklevel=2)
            plan = new
        self.scheduler.restart(plan, self.step)
        self.history = list(train["history"])
        self.best_map, self.best_epoch = float(train["best_map"]), train["best_epoch"]
        self._resumed = True
        return self.epoch


def _length(loader) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


def _summary(row: dict, epochs: int) -> str:
    line = (f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  acc {100 * row['acc_global']:.1f}%"
            f"  lr {row['lr']:.2g}  {row['images_per_s']:.1f} img/s  {row['rss_mb']:.0f} MiB")
    if "mAP" in row:
        line += f"  | Rank-1 {100 * row.get('rank1', math.nan):.1f}%  mAP {100 * row['mAP']:.1f}%"
    return line
