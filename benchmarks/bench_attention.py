"""Is HA-CNN's attention where the person is? Measured against the synthetic ground truth.

    python benchmarks/bench_attention.py --weights runs/hacnn/best.pt          # small test set
    python benchmarks/bench_attention.py --size default --weights W.pt --device cuda
    python benchmarks/bench_attention.py --size tiny --max-images 40            # a quick check

Runs :func:`hacnn.diagnostics.measure_attention` on the query and gallery
images of the synthetic benchmark's test identities (distractors and junk
left out) for

(a) an untrained HA-CNN (seeded): what the architecture does before learning;
(b) fixed stripes (``hard_attention=False``, untrained, or ``--stripes-weights``):
    the regions' reference placement;
(c) a trained checkpoint (``--weights``, any hacnn or torchreid HA-CNN file).

and prints per level the soft-attention share on person pixels (of ``a`` and
of ``a - min(a)``) next to the uniform baseline (the person's area share),
and per level and region (top to bottom vs head, torso, legs, feet) the IoU
with the part's full-width stripe, the share of the part covered, and the
Pearson r (95 % interval, n) of the region's t_y with the person's vertical
offset in the crop. Regions that never move (a and b) have no r (NaN).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, set_threads  # noqa: E402

from hacnn import HACNN  # noqa: E402
from hacnn.checkpoint import load_model  # noqa: E402
from hacnn.data.synthetic import Synthetic  # noqa: E402
from hacnn.data.synthetic_truth import person_items  # noqa: E402
from hacnn.diagnostics import AttentionMeasures, measure_attention, summarize_measures  # noqa: E402


def models(args, num_classes: int) -> dict[str, torch.nn.Module]:
    """The models to measure, by label."""
    torch.manual_seed(args.seed)
    out = {"untrained": HACNN(num_classes)}
    torch.manual_seed(args.seed)
    out["fixed stripes" + (" (trained)" if args.stripes_weights else " (untrained)")] = \
        load_model(args.stripes_weights) if args.stripes_weights else \
        HACNN(num_classes, hard_attention=False)
    if args.weights:
        out[f"trained ({Path(args.weights).name})"] = load_model(args.weights)
    return out


def main(argv: list[str] | None = None) -> dict[str, AttentionMeasures]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="a trained HA-CNN checkpoint (c)")
    p.add_argument("--stripes-weights", help="a trained hard_attention=False checkpoint for (b)")
    p.add_argument("--size", default="small", choices=("tiny", "small", "default"),
                   help="synthetic benchmark size (default: %(default)s)")
    p.add_argument("--misalignment", type=float, default=0.25)
    p.add_argument("--root", help="a synthetic benchmark folder (overrides --size/--misalignment)")
    p.add_argument("--max-images", type=int, help="measure every k-th image, at most this many")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="of the untrained models")
    p.add_argument("--figure", type=Path, help="also save hacnn.viz.plot_attention_measures here")
    args = p.parse_args(argv)
    set_threads(args.threads)
    data = Synthetic(args.root) if args.root else \
        Synthetic(size=args.size, misalignment=args.misalignment)
    items = person_items(data)
    if args.max_images and len(items) > args.max_images:
        items = items[::-(-len(items) // args.max_images)]
    cfg = data.config
    print(f"# synthetic {cfg.name}: {len(items)} test images of {cfg.num_test_ids} identities, "
          f"device {args.device} -- {machine()}")
    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 20)
    results = {}
    for label, model in models(args, cfg.num_train_ids).items():
        start = time.perf_counter()
        m = measure_attention(model.to(args.device), data, items, batch_size=args.batch_size)
        results[label] = m
        print(f"\n## {label} ({time.perf_counter() - start:.0f} s)\n")
        print("soft attention: share of the map's mass on person pixels; share of a - min(a); "
              "uniform baseline = person_area")
        print(m.soft_table().round(3).to_string())
        print("\nregions (top to bottom) vs parts: IoU with the full-width stripe, part covered, "
              "Pearson r of t_y with the person's vertical offset [95 % interval]")
        print(m.region_table().round(3).to_string())
    print("\n## summary (iou, part_covered, r_offset: mean over the 4 regions)\n")
    print(summarize_measures(results).round(3).to_string())
    if args.figure:
        from hacnn.viz import plot_attention_measures

        plot_attention_measures(results, path=args.figure)
        print(f"\nfigure: {args.figure}")
    return results


if __name__ == "__main__":
    main()
