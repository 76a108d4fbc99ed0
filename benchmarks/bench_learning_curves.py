"""Learning curves of the ablation ladder: at what budget do the variants' differences exceed seed noise?

    python benchmarks/bench_learning_curves.py --epochs 30 --seeds 0 1 2          # small benchmark
    python benchmarks/bench_learning_curves.py --epochs 30 --seeds 0 1 2 --size default
    python benchmarks/bench_learning_curves.py --model init=pytorch ...           # HACNNConfig overrides
    python benchmarks/bench_learning_curves.py --quick                            # a check (~2 min)

Each variant of ``hacnn.experiment.VARIANTS`` (default: full HA-CNN, global
only, fixed stripes) trains for ``--epochs`` epochs per seed, evaluated after
every epoch, through :func:`hacnn.reproduce.cached_run`: finished runs are
reused (``runs/cache``), so the curves can be grown over several sittings and
a longer ``--epochs`` retrains only what is new. For every epoch it gives each
variant's Rank-1 / mAP mean +- sd over seeds and the *paired* difference
(same seed) of every variant from the first one with its 95 % Student-t
interval (:mod:`hacnn.stats`), then the first epoch from which that difference
stays beyond seed noise (interval excluding 0) to the end; ``--figure`` draws
the curves (mean +- sd).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_budget import TINY_MODEL, _value  # noqa: E402
from common import machine, set_threads  # noqa: E402

from hacnn.experiment import VARIANTS  # noqa: E402
from hacnn.reproduce import cached_run  # noqa: E402
from hacnn.stats import paired_difference, summarize  # noqa: E402

METRICS = (("rank1", "Rank-1"), ("mAP", "mAP"))


def curves(variants, seeds, epochs, size, model, train, quick):
    """variant -> seed -> [per-epoch row with rank1 / mAP in %]."""
    out = {}
    for v in variants:
        out[v] = {}
        for seed in seeds:
            run = cached_run("synthetic", synthetic_size=size, model={**(TINY_MODEL if quick else {}),
                             **VARIANTS[v], **model}, epochs=epochs, eval_every=1, seed=seed, **train)
            rows = [r for r in run.history if r.get("mAP") is not None]
            out[v][seed] = [{"epoch": r["epoch"], "rank1": 100 * r["rank1"], "mAP": 100 * r["mAP"]} for r in rows]
            print(f"  {v:14s} seed {seed}: epoch {rows[-1]['epoch']} Rank-1 {100 * rows[-1]['rank1']:5.1f} "
                  f"mAP {100 * rows[-1]['mAP']:5.1f}" + (" (cached)" if run.reused else ""), flush=True)
    return out


def settled_from(diffs) -> int | None:
    """The first epoch from which every later difference is beyond seed noise (None: never)."""
    first = None
    for epoch, d in diffs:
        first = (first or epoch) if d.significant else None
    return first


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=["full HA-CNN", "global only", "fixed stripes"],
                   choices=sorted(VARIANTS))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", default=None, help="synthetic size (default small; --quick: tiny)")
    p.add_argument("--model", nargs="*", default=[], help="HACNNConfig overrides key=value")
    p.add_argument("--train", nargs="*", default=[], help="TrainConfig overrides key=value (recipe=..., lr=...)")
    p.add_argument("--every", type=int, default=5, help="print every N-th epoch's table")
    p.add_argument("--figure", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny benchmark, reduced model, 4 epochs")
    a = p.parse_args(argv)
    set_threads(a.threads)
    kv = lambda pairs: {k: _value(v) for k, _, v in (x.partition("=") for x in pairs)}  # noqa: E731
    epochs = 4 if a.quick else a.epochs
    size = a.size or ("tiny" if a.quick else "small")
    print(f"{machine()}; synthetic ({size}), {epochs} epochs, seeds {a.seeds}, model {kv(a.model)}, "
          f"train {kv(a.train)}", flush=True)
    runs = curves(a.variants, a.seeds, epochs, size, kv(a.model), kv(a.train), a.quick)
    base = a.variants[0]
    n_epochs = min(len(runs[v][s]) for v in runs for s in a.seeds)
    for key, name in METRICS:
        print(f"\n{name} (%): mean +- sd over {len(a.seeds)} seeds; paired difference from {base!r} [95 % CI]")
        print("epoch | " + " | ".join(f"{v:>16s}" for v in a.variants))
        for e in range(n_epochs):
            if (e + 1) % a.every and e + 1 != n_epochs:
                continue
            cells = []
            for v in a.variants:
                vals = [runs[v][s][e][key] for s in a.seeds]
                cell = str(summarize(vals))
                if v != base:
                    cell += " " + str(paired_difference(vals, [runs[base][s][e][key] for s in a.seeds]))
                cells.append(f"{cell:>16s}")
            print(f"{runs[base][a.seeds[0]][e]['epoch']:5d} | " + " | ".join(cells))
        for v in a.variants[1:]:
            diffs = [(runs[base][a.seeds[0]][e]["epoch"],
                      paired_difference([runs[v][s][e][key] for s in a.seeds],
                                        [runs[base][s][e][key] for s in a.seeds])) for e in range(n_epochs)]
            at = settled_from(diffs)
            print(f"{name}: {v!r} vs {base!r} beyond seed noise from epoch {at} on" if at else
                  f"{name}: {v!r} vs {base!r} never beyond seed noise to epoch {diffs[-1][0]}")
    if a.figure is not None:
        plot(runs, a.seeds, a.figure)


def plot(runs, seeds, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (key, name) in zip(axes, METRICS):
        for v, by_seed in runs.items():
            n = min(len(by_seed[s]) for s in seeds)
            x = [by_seed[seeds[0]][e]["epoch"] for e in range(n)]
            y = np.array([[by_seed[s][e][key] for e in range(n)] for s in seeds])
            ax.plot(x, y.mean(0), label=v)
            ax.fill_between(x, y.mean(0) - y.std(0, ddof=1 if len(seeds) > 1 else 0),
                            y.mean(0) + y.std(0, ddof=1 if len(seeds) > 1 else 0), alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{name} (%)")
        ax.set_title(f"{name}, mean +- sd over {len(seeds)} seeds")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
