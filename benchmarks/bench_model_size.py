"""Parameter count and forward FLOPs of HA-CNN at 1x3x160x64, beside the paper's and torchreid's.

    python benchmarks/bench_model_size.py

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per
multiply-add of convolutions and matrix products), parameters without the
identity classifiers (whose size depends on the data set).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import torchreid_pair  # noqa: E402

PAPER_PARAMS, PAPER_GFLOPS = 2.7e6, 1.09


def size(model: torch.nn.Module, classifier_prefixes=("classifier",)) -> tuple[int, float]:
    params = sum(p.numel() for k, p in model.named_parameters() if not k.startswith(classifier_prefixes))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(torch.randn(1, 3, 160, 64))
    return params, fc.get_total_flops() / 1e9


def main() -> None:
    tr, ours = torchreid_pair()
    rows = [("paper (Li et al., CVPR 2018)", PAPER_PARAMS, PAPER_GFLOPS),
            ("torchreid HACNN", *size(tr)), ("hacnn.HACNN", *size(ours))]
    print(f"{'model':32s} {'params (M, no classifiers)':>28s} {'GFLOPs @1x3x160x64':>20s}")
    for name, p, g in rows:
        print(f"{name:32s} {p / 1e6:28.3f} {g:20.3f}")
    p, g = rows[-1][1:]
    print(f"hacnn vs paper: params {p / PAPER_PARAMS:.3f}x, FLOPs {g / PAPER_GFLOPS:.3f}x")


if __name__ == "__main__":
    main()
