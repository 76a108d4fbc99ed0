"""The reference protocol (issue 17): the ablations at a budget where they mean something.

Notebook 09's ladder (the paper's Table 6 switches, :data:`LADDER`) and its
misalignment sweep (fixed stripes vs learned regions, :data:`SWEEP`) on the
``small`` synthetic benchmark, every configuration at the same budget
(:class:`Protocol`: the default recipe, ``epochs`` epochs, evaluated every
``eval_every`` epochs, so each run is also a learning curve) and with at least
three seeds, so that mean +- sd and the *paired* differences (same seed,
:func:`hacnn.stats.paired_difference`) can tell a component's effect from
seed noise.

Every run goes through :func:`hacnn.reproduce.cached_run`: a finished run is
loaded, never retrained, so the protocol can be spread over several sittings
(an interrupted run is retrained from its start). :func:`plan` orders the
runs so that the learning curves of issue 17's first part (full HA-CNN,
global only, fixed stripes at the default misalignment) come first.
``python -m hacnn reproduce --reference`` trains what is missing and executes
notebooks 06-09 on it into ``results/reference/``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .experiment import VARIANTS

LADDER = ("global only", "+ soft", "+ hard", "full HA-CNN", "without CAIL")
SWEEP = ("fixed stripes", "full HA-CNN")
CURVES = ("full HA-CNN", "global only", "fixed stripes")   # issue 17 part 1, trained first
BASELINE = "full HA-CNN"                                     # paired differences are from it
WEIGHTS = ("full HA-CNN", "global only")                     # the published reference weights


@dataclass(frozen=True)
class Protocol:
    """One budget for every ablation run (the cache key follows from it).

    Adam 1e-3 constant (the default recipe, adam-triplet, at the quick
    preset's learning rate: a constant schedule, so epoch ``e`` of a run is
    what a run of ``e`` epochs gives, and one run is a learning curve), fp32
    (``amp="none"``: the numbers do not depend on whether the CPU computes
    bf16), P x K batches of 32 = 8 identities x 4 images.
    """

    size: str = "small"                     # synthetic size of the ladder and sweep
    epochs: int = 8
    eval_every: int = 2
    seeds: tuple[int, ...] = (0, 1, 2)
    lr: float = 1e-3
    amp: str = "none"
    misalignment: float = 0.25              # the benchmark's default: the ladder's
    misalignments: tuple[float, ...] = (0.0, 0.25, 0.6)   # the sweep's
    weights_size: str = "default"           # the reference weights' benchmark (notebook 06)

    def __post_init__(self):
        if self.epochs < 1 or self.eval_every < 1 or not self.seeds:
            raise ValueError(f"a protocol needs epochs >= 1, eval_every >= 1 and a seed; got "
                             f"epochs={self.epochs}, eval_every={self.eval_every}, seeds={self.seeds}")
        if self.misalignment not in self.misalignments:
            raise ValueError(f"the ladder's misalignment {self.misalignment} must be one of the "
                             f"sweep's {self.misalignments} (the sweep reuses the ladder's runs)")

    def train_settings(self) -> dict:
        """The ``TrainConfig`` keywords of every run of the protocol (recipe: the default)."""
        return dict(epochs=self.epochs, eval_every=self.eval_every, lr=self.lr, amp=self.amp)

    def to_dict(self) -> dict:
        return asdict(self)


REFERENCE = Protocol()


def benchmark(size: str, misalignment: float, **overrides) -> Path:
    """The synthetic benchmark of ``size`` at ``misalignment`` (generated once, then reused)."""
    from .data.synthetic import default_root, generate_synthetic
    from .data.synthetic_plan import SyntheticConfig

    cfg = SyntheticConfig.for_size(size, misalignment=misalignment, **overrides)
    return generate_synthetic(default_root(cfg), config=cfg)


def run(variant: str, misalignment: float, seed: int, protocol: Protocol = REFERENCE, *,
        device: str = "cpu", data: dict | None = None, progress: bool = False):
    """Train (or load) one run of the protocol: a :class:`hacnn.reproduce.CachedRun`.

    ``variant``: a name of :data:`hacnn.experiment.VARIANTS`; ``data``:
    ``SyntheticConfig`` overrides (notebook 09's quick mode cuts the tiny size
    to 12 identities).
    """
    from .reproduce import cached_run

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    root = benchmark(protocol.size, misalignment, **(data or {}))
    return cached_run("synthetic", root=root, synthetic_size=protocol.size, model=VARIANTS[variant],
                      device=device, seed=seed, progress=progress, **protocol.train_settings())


def plan(protocol: Protocol = REFERENCE) -> list[tuple[str, float, int]]:
    """Every distinct ``(variant, misalignment, seed)`` of the protocol, in training order:
    the learning-curve variants first, then the rest of the ladder, then the sweep; seed by
    seed within each group, so that an interrupted protocol still has paired seeds."""
    m0 = protocol.misalignment
    groups = [[(v, m0) for v in CURVES], [(v, m0) for v in LADDER if v not in CURVES],
              [(v, m) for m in protocol.misalignments if m != m0 for v in SWEEP]]
    out = []
    for group in groups:
        for seed in protocol.seeds:
            out += [(v, m, seed) for v, m in group if (v, m, seed) not in out]
    return out


def weights_run(variant: str = BASELINE, protocol: Protocol = REFERENCE, *, device: str = "cpu",
                progress: bool = False):
    """The reference weights' run: ``variant`` on the ``protocol.weights_size`` benchmark (its
    default misalignment), the protocol's budget, its first seed (notebook 06's reference mode)."""
    from .reproduce import cached_run

    return cached_run("synthetic", synthetic_size=protocol.weights_size, model=VARIANTS[variant],
                      device=device, seed=protocol.seeds[0], progress=progress,
                      **protocol.train_settings())


def train_all(protocol: Protocol = REFERENCE, *, device: str = "cpu", log=print) -> int:
    """Train every run of :func:`plan`, then the reference weights' (:func:`weights_run` of
    :data:`WEIGHTS`), that the cache lacks; returns how many were trained."""
    import time

    trained = 0
    runs = plan(protocol) + [(v, None, protocol.seeds[0]) for v in WEIGHTS]
    for k, (variant, m, seed) in enumerate(runs, 1):
        start = time.perf_counter()
        r = run(variant, m, seed, protocol, device=device) if m is not None else \
            weights_run(variant, protocol, device=device)
        trained += not r.reused
        where = f"misalignment {m}" if m is not None else f"{protocol.weights_size} benchmark"
        log(f"[reference] {k}/{len(runs)} {variant} {where} seed {seed}: Rank-1 "
            f"{100 * r.final['rank1']:.1f} mAP {100 * r.final['mAP']:.1f}"
            + (" (cached)" if r.reused else f" ({(time.perf_counter() - start) / 60:.1f} min)"))
    return trained


def curves(runs) -> "pd.DataFrame":
    """Long table of the evaluated epochs of ``runs``: ``{(variant, misalignment, seed): CachedRun}``
    -> columns variant, misalignment, seed, epoch, Rank-1, mAP (percent)."""
    import pandas as pd

    rows = [{"variant": v, "misalignment": m, "seed": s, "epoch": r["epoch"],
             "Rank-1": 100 * r["rank1"], "mAP": 100 * r["mAP"]}
            for (v, m, s), cached in runs.items() for r in cached.history if r.get("mAP") is not None]
    return pd.DataFrame(rows)


def paired_table(df, by: str = "variant", base: str = BASELINE, metrics=("Rank-1", "mAP")):
    """Each ``by`` group of ``df`` (one epoch, one row per seed) over its seeds: mean, sd
    and the paired difference from ``base`` (same seeds) with its 95 % Student-t interval.

    Numeric columns per metric ``M``: ``M`` (mean), ``M sd``, ``M diff``,
    ``M low``, ``M high`` (NaN for ``base`` itself), ``M significant`` (the
    interval excludes 0); :func:`format_table` writes them as text.
    """
    import math

    import pandas as pd

    from .stats import paired_difference, summarize

    rows = []
    ref = df[df[by] == base].set_index("seed")
    for name, group in df.groupby(by, sort=False):
        g = group.set_index("seed")
        if g.index.has_duplicates:
            raise ValueError(f"{by} {name!r} has more than one row per seed: select one epoch first")
        row = {by: name, "seeds": len(g)}
        for metric in metrics:
            s = summarize(list(g[metric]))
            row.update({metric: s.mean, f"{metric} sd": s.sd})
            common = sorted(set(g.index) & set(ref.index))
            if name == base or not common:
                d = (math.nan, math.nan, math.nan, False)
            else:
                diff = paired_difference(list(g.loc[common, metric]), list(ref.loc[common, metric]))
                d = (diff.mean, diff.low, diff.high, diff.significant)
            row.update(dict(zip((f"{metric} diff", f"{metric} low", f"{metric} high",
                                 f"{metric} significant"), d)))
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(table, by: str = "variant", base: str = BASELINE, metrics=("Rank-1", "mAP")):
    """:func:`paired_table` as text: ``mean +- sd`` and ``+d [low, high]`` (``baseline`` for ``base``)."""
    import pandas as pd

    from .stats import Difference, Summary

    out = pd.DataFrame({by: table[by], "seeds": table["seeds"]})
    for metric in metrics:
        out[f"{metric} (%)"] = [str(Summary(m, s, n)) for m, s, n in
                                zip(table[metric], table[f"{metric} sd"], table["seeds"])]
        out[f"{metric} - {base} [95 % CI]"] = [
            "baseline" if name == base else str(Difference(d, lo, hi, n))
            for name, d, lo, hi, n in zip(table[by], table[f"{metric} diff"], table[f"{metric} low"],
                                          table[f"{metric} high"], table["seeds"])]
    return out


__all__ = ["BASELINE", "CURVES", "LADDER", "Protocol", "REFERENCE", "SWEEP", "benchmark", "curves",
           "format_table", "paired_table", "plan", "WEIGHTS", "run", "train_all", "weights_run"]
