"""Shared helpers for the benchmark scripts: torchreid's model with our weights, fair timing."""
from __future__ import annotations

import os
import resource
import statistics
import time
import warnings

import copy

import torch
import torch.nn.functional as F

# torchreid's HACNN uses deprecated calls (F.upsample, affine_grid defaults): silence them.
warnings.filterwarnings("ignore", category=UserWarning)


def machine() -> str:
    from hacnn.reproducibility import cpu_model

    return f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def torchreid_pair(num_classes: int = 751, seed: int = 0):
    """(torchreid HACNN, hacnn.HACNN) holding the same random weights and BN statistics."""
    from hacnn import HACNN
    from hacnn.convert import from_torchreid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.models.hacnn import HACNN as TorchreidHACNN
    torch.manual_seed(seed)
    ours = HACNN(num_classes)
    with torch.no_grad():   # non-trivial BN statistics, as after training
        for m in ours.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    tr = TorchreidHACNN(num_classes, use_gpu=False)
    from hacnn.convert import to_torchreid

    tr.load_state_dict(to_torchreid(ours.state_dict()))
    assert from_torchreid(tr.state_dict()).keys() == ours.state_dict().keys()
    return tr, ours


AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchreidAsHACNN(torch.nn.Module):
    """torchreid's HACNN (its code, its PyTorch-default init) behind hacnn's training interface.

    Training mode returns :class:`hacnn.model.HACNNOutput` (global and local logits) so that
    ``hacnn.training.Trainer`` trains it with the same data, loss, schedule and precision as
    ours; eval mode returns torchreid's own 1024-d feature (each half L2-normalised).
    """

    def __init__(self, num_classes: int, config=None):
        super().__init__()
        from hacnn.config import HACNNConfig

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchreid.reid.models.hacnn import HACNN as TorchreidHACNN
        self.config = HACNNConfig(num_classes=num_classes)    # input size etc. for the loaders
        self.net = TorchreidHACNN(num_classes, use_gpu=False)

    def forward(self, x):
        from hacnn.model import HACNNOutput

        out = self.net(x)
        if self.training:
            g, l = out
            return HACNNOutput(g, l, None, None)
        return out


def channels_last_copy(model):
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def train_step_fn(model, x, y, amp: str = "fp32", iters: int = 1, fused: bool = False):
    """A callable running ``iters`` training steps: forward in train mode under ``amp``
    (AMP key) autocast, cross-entropy on both heads, backward, Adam (lr 3e-4; a
    GradScaler for fp16; ``fused``: PyTorch's fused kernel, as hacnn's
    ``build_optimizer`` takes, else the per-parameter loop, torchreid's);
    synchronises a CUDA device at the end."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, fused=fused or None)
    device = x.device
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def run():
        for _ in range(iters):
            with torch.autocast(device.type, dtype=AMP[amp] or torch.float32, enabled=AMP[amp] is not None):
                g, l = model(x)[:2]
            loss = F.cross_entropy(g.float(), y) + F.cross_entropy(l.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return run


def interleaved_rates(fns: dict, items_per_call: int, repeats: int = 5, warmup: int = 1) -> dict:
    """Images/s of each callable, timed round-robin (A B C A B C ...) so load drifts hit all alike.

    Returns the median rate per name.
    """
    for f in fns.values():
        for _ in range(warmup):
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: items_per_call / statistics.median(v) for k, v in times.items()}


def peak_rss_mib() -> float:
    """Peak resident memory of this process since start or the last reset (VmHWM), MiB."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss_mib() -> float:
    """Reset the peak to the current RSS (Linux: write 5 to clear_refs); returns the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return peak_rss_mib()


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
