"""Learning curves of the ablation ladder: at what budget do the variants' differences exceed seed noise?

    python benchmarks/bench_learning_curves.py                          # the reference protocol's runs
    python benchmarks/bench_learning_curves.py --epochs 16 --eval-every 2 --seeds 0 1 2 3 4
    python benchmarks/bench_learning_curves.py --size default --figure figures/curves_default.png
    python benchmarks/bench_learning_curves.py --quick                  # a check (~2 min)

Each variant (default: full HA-CNN, global only, fixed stripes, issue 17's
first part) trains for ``--epochs`` epochs per seed, evaluated every
``--eval-every`` epochs, through :func:`hacnn.reference.run`: with the
defaults these are the runs of the reference protocol
(:data:`hacnn.reference.REFERENCE`), so whatever ``python -m hacnn reproduce
--reference`` trained is loaded from the run cache (and the other way round),
and the curves can be grown over several sittings. For every evaluated epoch
it prints each variant's Rank-1 / mAP mean +- sd over seeds and the *paired*
difference (same seed) from the first variant with its 95 % Student-t interval
(:mod:`hacnn.stats`), then the first epoch from which that difference stays
beyond seed noise to the end (:func:`hacnn.reference.settled_from`);
``--figure`` draws the curves (mean +- sd).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, set_threads  # noqa: E402

from hacnn.experiment import VARIANTS  # noqa: E402
from hacnn.reference import CURVES, REFERENCE, curves, paired_table, run, settled_from  # noqa: E402

METRICS = ("Rank-1", "mAP")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=list(CURVES), choices=sorted(VARIANTS))
    p.add_argument("--epochs", type=int, default=REFERENCE.epochs)
    p.add_argument("--eval-every", type=int, default=REFERENCE.eval_every)
    p.add_argument("--seeds", type=int, nargs="+", default=list(REFERENCE.seeds))
    p.add_argument("--size", default=None, help=f"synthetic size (default {REFERENCE.size}; --quick: tiny)")
    p.add_argument("--misalignment", type=float, default=REFERENCE.misalignment)
    p.add_argument("--figure", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny benchmark cut to 12 identities, 2 epochs")
    a = p.parse_args(argv)
    set_threads(a.threads)
    protocol = replace(REFERENCE, size=a.size or ("tiny" if a.quick else REFERENCE.size),
                       epochs=2 if a.quick else a.epochs, eval_every=1 if a.quick else a.eval_every,
                       seeds=tuple(a.seeds), misalignment=a.misalignment,
                       misalignments=tuple(sorted({a.misalignment, *REFERENCE.misalignments})))
    data = dict(num_train_ids=12, num_test_ids=8) if a.quick and a.size is None else {}
    print(f"{machine()}; {protocol}", flush=True)
    runs = {}
    for v in a.variants:
        for seed in protocol.seeds:
            r = run(v, protocol.misalignment, seed, protocol, data=data)
            runs[(v, protocol.misalignment, seed)] = r
            print(f"  {v:14s} seed {seed}: epoch {r.final['epoch']} Rank-1 {100 * r.final['rank1']:5.1f} "
                  f"mAP {100 * r.final['mAP']:5.1f}" + (" (cached)" if r.reused else ""), flush=True)
    df = curves(runs)
    base = a.variants[0]
    for epoch in sorted(df["epoch"].unique()):
        table = paired_table(df[df["epoch"] == epoch], base=base)
        print(f"\nepoch {epoch}: mean +- sd over {len(protocol.seeds)} seeds; paired difference from "
              f"{base!r} [95 % CI]")
        for _, row in table.iterrows():
            cells = [f"{m} {row[m]:5.1f} +- {row[m + ' sd']:4.1f}" + (
                "" if row["variant"] == base else
                f" ({row[m + ' diff']:+.1f} [{row[m + ' low']:+.1f}, {row[m + ' high']:+.1f}])")
                for m in METRICS]
            print(f"  {row['variant']:14s} " + " | ".join(cells))
    for metric in METRICS:
        for v in a.variants[1:]:
            at, diff = settled_from(df, v, base=base, metric=metric)
            print(f"{metric}: {v!r} - {base!r} at epoch {protocol.epochs}: {diff}; beyond seed noise "
                  + (f"from epoch {at} on" if at else "at no evaluated epoch to the end"))
    if a.figure is not None:
        plot(df, a.figure, len(protocol.seeds))


def plot(df, path: Path, num_seeds: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, METRICS):
        sns.lineplot(data=df, x="epoch", y=metric, hue="variant", errorbar="sd", marker="o", ax=ax,
                     legend=ax is axes[0])
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{metric}, mean +- sd over {num_seeds} seeds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
