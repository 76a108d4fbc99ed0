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
(an interrupted run is retrained from its start). :func:`train_all` also keeps
each finished run's record (history and config, no weights) in
``results/reference/runs/`` (:data:`hacnn.reproduce.RECORDS`), which the
repository commits: the published run is loaded from there on a machine with
the same kernel path whose cache is empty, and a protocol cut off on one
machine goes on from its records on the next. :func:`plan` orders the
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
    bf16), P x K batches of 32 = 8 identities x 4 images: ``num_instances``
    is fixed at 4, the default when the protocol's runs were published
    (2026-12-02), so that its records stay the runs loaded; the package's
    default became K = 2 on 2026-12-06 (chosen on real images; level on this
    synthetic benchmark), which this protocol has not been re-run under.
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
    num_instances: int = 4                  # K of the P x K batches (the package default is 2)

    def __post_init__(self):
        if self.epochs < 1 or self.eval_every < 1 or not self.seeds:
            raise ValueError(f"a protocol needs epochs >= 1, eval_every >= 1 and a seed; got "
                             f"epochs={self.epochs}, eval_every={self.eval_every}, seeds={self.seeds}")
        if self.misalignment not in self.misalignments:
            raise ValueError(f"the ladder's misalignment {self.misalignment} must be one of the "
                             f"sweep's {self.misalignments} (the sweep reuses the ladder's runs)")

    def train_settings(self) -> dict:
        """The ``TrainConfig`` keywords of every run of the protocol (recipe: the default)."""
        return dict(epochs=self.epochs, eval_every=self.eval_every, lr=self.lr, amp=self.amp,
                    num_instances=self.num_instances)

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
                progress: bool = False, train: bool = False):
    """The reference weights' run: ``variant`` on the ``protocol.weights_size`` benchmark (its
    default misalignment), the protocol's budget, its first seed (notebook 06's reference mode).
    ``train``: a run found only as a record from which no weights were exported (a record
    keeps none) is trained again, so that its weights exist (:func:`train_all`)."""
    from .reproduce import cached_run

    kw = dict(synthetic_size=protocol.weights_size, model=VARIANTS[variant], device=device,
              seed=protocol.seeds[0], progress=progress, **protocol.train_settings())
    r = cached_run("synthetic", **kw)
    if train and r.from_record:
        from .zoo import exported_from

        if exported_from(r.out_dir.name) is None:
            r = cached_run("synthetic", records=None, **kw)
    return r


def train_all(protocol: Protocol = REFERENCE, *, device: str = "cpu", records=None, log=print) -> int:
    """Train every run of :func:`plan`, then the reference weights' (:func:`weights_run` of
    :data:`WEIGHTS`), that the cache and the records lack; returns how many were trained.
    Each run's record is kept in ``records`` (default :data:`hacnn.reproduce.RECORDS`)."""
    import time

    from .reproduce import RECORDS, record_run

    trained = 0
    runs = plan(protocol) + [(v, None, protocol.seeds[0]) for v in WEIGHTS]
    for k, (variant, m, seed) in enumerate(runs, 1):
        start = time.perf_counter()
        r = run(variant, m, seed, protocol, device=device) if m is not None else \
            weights_run(variant, protocol, device=device, train=True)
        trained += not r.reused
        if not r.from_record:
            record_run(r, records or RECORDS)
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


def settled_from(df, variant: str, base: str = BASELINE, metric: str = "Rank-1"):
    """The first evaluated epoch from which ``variant``'s paired difference from ``base``
    stays beyond seed noise (its 95 % interval excludes 0) at every later evaluated epoch,
    and the difference at the last one: ``(epoch or None, Difference)``. ``df``: :func:`curves`
    rows of one misalignment."""
    from .stats import paired_difference

    first, diff = None, None
    for epoch in sorted(df["epoch"].unique()):
        at = df[df["epoch"] == epoch]
        a, b = (at[at["variant"] == v].set_index("seed")[metric] for v in (variant, base))
        seeds = sorted(set(a.index) & set(b.index))
        if not seeds:
            continue
        diff = paired_difference(list(a.loc[seeds]), list(b.loc[seeds]))
        first = (first or int(epoch)) if diff.significant else None
    return first, diff


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


# ----------------------------------------------------------------------------- publishing

REFERENCE_DIR = "results/reference"
NOTEBOOKS = ("06_training.ipynb", "07_visualising_attention.ipynb", "08_paper_tables.ipynb",
             "09_ablations.ipynb")


def _git_commit(repo: Path) -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" (with uncommitted changes)" if dirty else "")


def _train_seconds(cached) -> float:
    """Training + evaluation seconds a run took when it was trained (from its log)."""
    return sum((r.get("epoch_time_s") or 0) + (r.get("eval_time_s") or 0) for r in cached.history)


def publish_weights(protocol: Protocol = REFERENCE, *, device: str = "cpu", out_dir=None,
                    provenance: dict | None = None, names=None, log=print) -> dict[str, dict]:
    """Export the runs of :func:`weights_run` as the reference weights (:mod:`hacnn.zoo`; ``names``:
    some of them, default all), with the test metrics of the fp16 weights themselves (a run
    trained now if the cache lacks it); returns name -> metrics."""
    import json

    from .experiment import evaluate_checkpoint
    from .zoo import REFERENCE_WEIGHTS, WEIGHTS_DIR, export_weights

    unknown = sorted(set(names or ()) - set(REFERENCE_WEIGHTS))
    if unknown:
        raise ValueError(f"no reference weights named {unknown}; known: {sorted(REFERENCE_WEIGHTS)}")
    out = Path(out_dir or WEIGHTS_DIR)
    written = {}
    for name, (variant, _) in REFERENCE_WEIGHTS.items():
        if names is not None and name not in names:
            continue
        r = weights_run(variant, protocol, device=device)
        if r.from_record:        # exported before, from this run (else r.weights raises)
            info = json.loads(r.weights.with_suffix(".json").read_text())
            log(f"[reference] weights {name}: exported from {r.out_dir.name} before, kept ({r.weights})")
            written[name] = info["metrics"]
            continue
        # the metrics stated are those of the file a user loads: export, then evaluate that file
        path = export_weights(r.weights, name, metrics={}, provenance={}, out_dir=out)
        metrics = evaluate_checkpoint(path, "synthetic", synthetic_size=protocol.weights_size,
                                      device=device, progress=False).row()
        metrics = {k: round(float(v), 6) for k, v in metrics.items() if isinstance(v, (int, float))}
        run_info = {"run": r.out_dir.name, "epochs": len(r.history), "seed": protocol.seeds[0],
                    "benchmark": f"synthetic {protocol.weights_size}", "protocol": protocol.to_dict(),
                    "fp32 run metrics": {k: round(float(r.final[k]), 6) for k in ("rank1", "mAP")},
                    "train seconds": round(_train_seconds(r), 1)}
        export_weights(r.weights, name, metrics=metrics, provenance={**(provenance or {}), **run_info},
                       out_dir=out)
        log(f"[reference] weights {name}: Rank-1 {100 * metrics['rank1']:.1f} mAP "
            f"{100 * metrics['mAP']:.1f} (fp16 file; the fp32 run: {100 * r.final['rank1']:.1f} / "
            f"{100 * r.final['mAP']:.1f}) -> {path}")
        written[name] = metrics
    return written


def _machines(runs: list[dict]) -> str:
    """Where the runs were trained, when more than one machine did (a record is kept per run)."""
    from collections import Counter

    where = Counter(r.get("cpu") for r in runs)
    if len(where) < 2:
        return ""
    return " The runs were trained on " + ", ".join(f"{cpu} ({n})" for cpu, n in where.items()) + \
        " (all in fp32; each run's record names its machine)."


def summary_markdown(out_dir=REFERENCE_DIR) -> str:
    """The published run of ``out_dir`` as Markdown: the ladder and the sweep (mean +- sd, paired
    differences from full HA-CNN with 95 % intervals), from which epoch each ladder difference
    stays beyond seed noise, the reference weights' metrics and the provenance."""
    import json

    import pandas as pd

    from .reproduce import to_markdown

    out = Path(out_dir)
    info = json.loads((out / "provenance.json").read_text())
    p = info["protocol"]
    ladder, sweep = pd.read_csv(out / "ladder.csv"), pd.read_csv(out / "sweep.csv")
    curves_df = pd.read_csv(out / "curves.csv")
    lines = [f"# The reference run ({info['finished']})", "",
             f"`{info['command']}` at commit `{info['commit']}`; {info['machine']['cpu']}, "
             f"{info['machine']['threads']} threads, torch {info['machine']['torch']}"
             + (f", {info['machine']['gpu']}" if info["machine"].get("gpu") else "") + "; "
             f"{info['train seconds (sum over runs, when each was trained)'] / 3600:.1f} h of training "
             "and evaluation in all." + _machines(info["runs"]), "",
             f"Protocol: synthetic `{p['size']}`, {p['epochs']} epochs per run evaluated every "
             f"{p['eval_every']}, seeds {p['seeds']}, Adam {p['lr']:g} constant (the default recipe), "
             f"amp {p['amp']}. Rank-1 / mAP in %; differences are paired by seed, from full HA-CNN, "
             "with 95 % Student-t intervals; an interval that holds 0 is not a finding.", "",
             f"## Ablations (misalignment {p['misalignment']})", "", to_markdown(format_table(ladder)), ""]
    for metric in ("Rank-1", "mAP"):
        at = curves_df[curves_df["misalignment"] == p["misalignment"]]
        for v in ladder["variant"]:
            if v != BASELINE:
                first, diff = settled_from(at[at["variant"].isin([v, BASELINE])], v, metric=metric)
                lines.append(f"- {metric}, {v} - {BASELINE}: {diff} at epoch {p['epochs']}; beyond seed "
                             "noise " + (f"from epoch {first} on" if first else "at no evaluated epoch"))
    text = format_table(sweep)
    text.insert(0, "misalignment", sweep["misalignment"].values)
    lines += ["", "## Misalignment sweep", "", to_markdown(text), "", "## Reference weights", ""]
    for r in info["runs"]:
        if r["benchmark"] == p["weights_size"]:
            lines.append(f"- {r['variant']} (`{p['weights_size']}` benchmark, seed {r['seed']}): "
                         f"Rank-1 {100 * r['rank1']:.1f} / mAP {100 * r['mAP']:.1f} (the fp32 run; the "
                         "fp16 files' own metrics are in hacnn/weights/*.json)")
    return "\n".join(lines) + "\n"


def publish(out_dir=REFERENCE_DIR, *, protocol: Protocol = REFERENCE, device: str = "cpu",
            weights_dir=None, log=print) -> Path:
    """``python -m hacnn reproduce --reference``: train what the cache lacks, export the reference
    weights, execute notebooks 06-09 on the protocol into ``out_dir`` (outputs kept, figures in
    ``out_dir/figures``; 09 writes ladder.csv, sweep.csv, curves.csv there) and write
    ``provenance.json`` (commit, command, machine, kernel path, wall and training times)."""
    import json
    import platform
    import time

    import torch

    from .reproduce import REPO_ROOT, run_notebook
    from .reproducibility import cpu_model, kernel_path

    start, started = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    trained = train_all(protocol, device=device, records=out / "runs", log=log)
    machine = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version(), "device": str(device),
               "gpu": torch.cuda.get_device_name(0) if str(device).startswith("cuda") else None}
    command = "python -m hacnn reproduce --reference" + (f" --device {device}" if device != "cpu" else "")
    provenance = {"commit": _git_commit(REPO_ROOT), "command": command, "machine": machine}
    publish_weights(protocol, device=device, out_dir=weights_dir, provenance=provenance, log=log)
    params = {"quick": False, "reference": True, "device": device, "results_dir": str(out),
              "figures_dir": str(out / "figures")}
    timings = []
    for name in NOTEBOOKS:
        t = time.perf_counter()
        log(f"[reference] {name} ...")
        run_notebook(REPO_ROOT / "notebooks" / name, out / name, params)
        timings.append({"notebook": name, "seconds": round(time.perf_counter() - t, 1)})
    runs = [(v, m, s, run(v, m, s, protocol, device=device)) for v, m, s in plan(protocol)] + \
        [(v, None, protocol.seeds[0], weights_run(v, protocol, device=device)) for v in WEIGHTS]
    info = {**provenance, "protocol": protocol.to_dict(), "kernel": kernel_path(device),
            "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "wall seconds of this call": round(time.perf_counter() - start, 1),
            "runs trained by this call": trained, "notebooks": timings,
            "train seconds (sum over runs, when each was trained)": round(sum(_train_seconds(r) for *_, r in runs), 1),
            "runs": [{"variant": v, "misalignment": m, "seed": s, "run": r.out_dir.name,
                      "benchmark": protocol.size if m is not None else protocol.weights_size,
                      "train seconds": round(_train_seconds(r), 1),
                      "cpu": r.config["kernel"].get("cpu") or r.config["kernel"].get("card"),
                      "rank1": round(float(r.final["rank1"]), 6), "mAP": round(float(r.final["mAP"]), 6)}
                     for v, m, s, r in runs]}
    (out / "provenance.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    (out / "README.md").write_text(summary_markdown(out))
    log(f"[reference] published in {out} ({info['wall seconds of this call'] / 60:.1f} min)")
    return out


__all__ = ["BASELINE", "CURVES", "LADDER", "NOTEBOOKS", "Protocol", "REFERENCE", "REFERENCE_DIR",
           "SWEEP", "WEIGHTS", "benchmark", "curves", "format_table", "paired_table", "plan", "publish",
           "publish_weights", "run", "settled_from", "summary_markdown", "train_all", "weights_run"]
