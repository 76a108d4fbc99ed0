"""Does the faster training path learn as well? hacnn vs torchreid's HACNN, same recipe and data.

    python benchmarks/bench_training_accuracy.py [--seeds 0 1] [--epochs 4] [--size small] [--fp32] [--same-init]

Trains torchreid's HACNN (its per-region loop, fp32) and hacnn.HACNN (the
default training path, ``amp="auto"``: bf16 autocast + channels_last on a CPU
that computes bf16 natively, else fp32 + channels_last; optionally also fp32 +
channels_last, and from torchreid's own initial weights) with the same Trainer, data order and
seeds on the synthetic benchmark (default: the quick preset's settings, small
size, 4 epochs, Adam 1e-3), and prints final Rank-1 / mAP (mean +- sd over
seeds) and images/s of each. Equal accuracy "within seed noise" means the
difference of means is within about one standard deviation of the seeds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, set_threads  # noqa: E402

from hacnn import HACNN, HACNNConfig, HACNNOutput  # noqa: E402
from hacnn.config import TrainConfig  # noqa: E402
from hacnn.data import build_test_loaders, build_train_loader  # noqa: E402
from hacnn.data.synthetic import Synthetic  # noqa: E402
from hacnn.reproducibility import seed_everything  # noqa: E402
from hacnn.training import Trainer, make_evaluator, resolve_amp  # noqa: E402


class TorchreidAdapter(nn.Module):
    """torchreid's HACNN behind hacnn's interface (HACNNOutput in train mode)."""

    def __init__(self, tr: nn.Module, num_classes: int):
        super().__init__()
        self.tr = tr
        self.config = HACNNConfig(num_classes=num_classes)

    def forward(self, x):
        if not self.training:
            return self.tr(x)
        g, l = self.tr(x)
        return HACNNOutput(g, l, None, None)


def build(kind: str, num_classes: int, seed: int) -> nn.Module:
    seed_everything(seed)
    if kind == "torchreid":
        from torchreid.reid.models.hacnn import HACNN as TorchreidHACNN

        return TorchreidAdapter(TorchreidHACNN(num_classes, use_gpu=False), num_classes)
    if kind == "hacnn, torchreid's init":   # torchreid's initial weights, converted: same start
        from hacnn.convert import from_torchreid

        model = HACNN(num_classes)
        model.load_state_dict(from_torchreid(build("torchreid", num_classes, seed).tr.state_dict()))
        return model
    return HACNN(num_classes)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--size", default="small")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fp32", action="store_true", help="also train hacnn in fp32 + channels_last "
                   "(the default path where the CPU has no native bf16)")
    p.add_argument("--same-init", action="store_true",
                   help="also train hacnn from torchreid's initial weights (converted), which leaves the "
                        "batched local stream as the only difference")
    a = p.parse_args(argv)
    set_threads(a.threads)
    data = Synthetic(size=a.size)
    query, gallery = build_test_loaders(data, 128, workers=0)
    default = f"hacnn default ({resolve_amp('auto', 'cpu') or 'fp32'})"      # TrainConfig() on this CPU
    variants = {"torchreid fp32": ("torchreid", dict(channels_last=False, amp="none")),
                default: ("hacnn", dict())}
    if a.fp32:
        variants["hacnn fp32"] = ("hacnn", dict(amp="none"))
    if a.same_init:
        variants["hacnn, torchreid's init"] = ("hacnn, torchreid's init", dict(amp="none"))
    results = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            for name, (kind, extra) in variants.items():
                cfg = TrainConfig(epochs=a.epochs, lr=a.lr, eval_every=a.epochs, seed=seed, workers=0, **extra)
                model = build(kind, data.num_train_pids, seed)
                loader = build_train_loader(data, cfg.batch_size, cfg.num_instances, workers=0, seed=seed)
                trainer = Trainer(model, loader, cfg, Path(tmp) / f"{name}-{seed}".replace(" ", "_"),
                                  evaluator=make_evaluator(query, gallery), progress=False, verbose=False)
                hist = trainer.fit()
                speed = statistics.median(r["images_per_s"] for r in hist)
                results[name].append((hist[-1]["rank1"], hist[-1]["mAP"], speed))
                print(f"seed {seed} {name:24s} rank1 {100 * hist[-1]['rank1']:5.1f}  "
                      f"mAP {100 * hist[-1]['mAP']:5.1f}  {speed:6.1f} img/s", flush=True)
    print(f"# synthetic '{a.size}', {a.epochs} epochs, Adam lr {a.lr}, seeds {a.seeds} -- {machine()}")
    for name, rows in results.items():
        r1, mp, sp = zip(*rows)
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        print(f"{name:24s} Rank-1 {100 * statistics.mean(r1):5.1f} +- {100 * sd(r1):4.1f}   "
              f"mAP {100 * statistics.mean(mp):5.1f} +- {100 * sd(mp):4.1f}   {statistics.mean(sp):6.1f} img/s")
    base = results["torchreid fp32"]
    for name, rows in results.items():
        if name == "torchreid fp32":
            continue
        for i, metric in ((0, "Rank-1"), (1, "mAP")):
            diff = [100 * (r[i] - t[i]) for r, t in zip(rows, base)]
            spread = statistics.mean([100 * sd([r[i] for r in rows]), 100 * sd([t[i] for t in base])])
            print(f"{name} - torchreid fp32, {metric}: {statistics.mean(diff):+5.1f} points "
                  f"(per seed {', '.join(f'{d:+.1f}' for d in diff)}; seed sd ~{spread:.1f})")
        print(f"{name} / torchreid fp32 speed: "
              f"{statistics.mean(r[2] for r in rows) / statistics.mean(t[2] for t in base):.2f}x")


if __name__ == "__main__":
    main()
