"""Models and recipes under the same wall-clock budget: hacnn vs torchreid's HACNN, one change at a time.

    # issue 16's table: real CUHK03 camera-pair crops, 10 minutes a run, 3 seeds
    python benchmarks/bench_budget.py --dataset cuhk03-pair --root ../shared/data/cuhk03_pair1 \\
        --budget 10m --seeds 0 1 2 --arms torchreid/adam hacnn/default
    # the synthetic `small` benchmark at 5 minutes
    python benchmarks/bench_budget.py --budget 5m --seeds 0 1 2 --arms torchreid/adam hacnn/default
    # one change at a time: the same recipe, hacnn with torchreid's initialisation
    python benchmarks/bench_budget.py ... --arms torchreid/adam hacnn/adam hacnn/adam/init=pytorch
    python benchmarks/bench_budget.py --quick          # a check that it runs (~3 min)

An *arm* is ``MODEL/RECIPE[/key=value,...]``: ``MODEL`` is ``hacnn`` or
``torchreid`` (torchreid's own HACNN code and initialisation, installed
torchreid package, trained by hacnn's Trainer through
``run_experiment(build_model=...)``: the same images, augmentation, P x K
batches, loss, schedule, bf16 autocast + channels_last and threads);
each model reads its data its own default way: hacnn through its default
tensor cache (``data_cache="auto"``: decoded once, the same batches bit for
bit; the decoding's seconds are counted in its images/s), torchreid through
the JPEG loader (it has no such cache); ``--data-cache`` or an arm's
``data_cache=...`` sets it;
``RECIPE`` names a recipe of ``hacnn.config.RECIPES`` (``default``: the
package's); the optional ``key=value`` pairs override HACNNConfig fields
(``init=pytorch``) or TrainConfig fields (``lr=1e-3``,
``label_smoothing=0.1``, ``num_instances=1``: plain random batches); torchreid's
arms keep torchreid's own K = 4 (:data:`TORCHREID_TRAIN`) unless they set it.

Every run trains with ``--time-budget`` (hacnn.schedule: throughput measured
over the first steps and again at the end of the warm-up or of the first
epoch, then the run planned to end with the budget, its lr schedule
annealing at that end) and is evaluated once at the end. Runs are
interleaved by seed (a machine that slows down mid-way hurts every arm alike)
and cached in ``OUT/results.jsonl`` by arm, its resolved training settings
(so a row of ``hacnn/default`` under earlier package defaults is not reused),
seed, budget, data, planner and kernel path (hacnn.reproducibility.kernel_path),
so a table can grow over several sittings and an arm that ran once is not run
again. ``--combine A.json B.json`` trains nothing: it pairs arms of published
tables of one machine, budget, data and seeds. The table gives Rank-1
and mAP as mean +- sd over seeds, epochs and end-to-end training images/s,
and every arm's *paired* difference from the first arm with its 95 %
Student-t interval (hacnn.stats).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TorchreidAsHACNN, machine, set_threads  # noqa: E402

from hacnn.config import DATA_CACHES, RECIPES, HACNNConfig, TrainConfig  # noqa: E402
from hacnn.experiment import DATASET_NAMES, run_experiment  # noqa: E402
from hacnn.reproducibility import kernel_path  # noqa: E402
from hacnn.schedule import parse_duration  # noqa: E402
from hacnn.stats import paired_difference, summarize  # noqa: E402

TINY_MODEL = {"channels": (32, 64, 96), "feat_dim": 64, "input_size": (32, 16),
              "local_sizes": ((8, 8), (4, 4), (2, 2))}
# The time-budget planner of hacnn.schedule: rows of another planner train another number of
# steps, so they are not reused (rows without the field: the 13-step plan of before 2026-12-01).
PLANNER = {"planner": "measured twice"}
# torchreid's side keeps torchreid's own P x K: K = 4 (its RandomIdentitySampler's num_instances
# default, and the batches of every torchreid row published here); hacnn's default became K = 2
# on 2026-12-06. An arm's own num_instances=... pair overrides it.
TORCHREID_TRAIN = {"num_instances": 4}
MODEL_FIELDS = {f.name for f in dataclasses.fields(HACNNConfig)}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)     # "none" stays a string (amp=none: fp32)


def parse_arm(arm: str) -> tuple[str, str, dict, dict]:
    """``MODEL/RECIPE[/k=v,...]`` -> (model, recipe, HACNNConfig overrides, TrainConfig overrides)."""
    parts = arm.split("/")
    if len(parts) not in (2, 3) or parts[0] not in ("hacnn", "torchreid"):
        raise ValueError(f"an arm is MODEL/RECIPE[/key=value,...] with MODEL hacnn or torchreid; got {arm!r}")
    model, recipe = parts[0], parts[1]
    if recipe != "default" and recipe not in RECIPES:
        raise ValueError(f"arm {arm!r}: recipe must be 'default' or one of {sorted(RECIPES)}")
    model_kw, train_kw = {}, {}
    for pair in (parts[2].split(",") if len(parts) == 3 and parts[2] else []):
        key, eq, text = pair.partition("=")
        if not eq or key not in MODEL_FIELDS | TRAIN_FIELDS:
            raise ValueError(f"arm {arm!r}: {pair!r} is not key=value with a HACNNConfig or TrainConfig field")
        if model == "torchreid" and key in MODEL_FIELDS:
            raise ValueError(f"arm {arm!r}: torchreid's model has no HACNNConfig field {key!r}")
        (model_kw if key in MODEL_FIELDS else train_kw)[key] = _value(text)
    if recipe != "default":
        train_kw = {"recipe": recipe, **train_kw}
    if model == "torchreid":
        train_kw = {**TORCHREID_TRAIN, **train_kw}
    return model, recipe, model_kw, train_kw


def data_cache_of(model: str, train_kw: dict, option: str | None) -> str:
    """The arm's ``data_cache``: its own ``data_cache=`` pair, else ``--data-cache``, else the model's
    default path (hacnn: TrainConfig's, ``auto``; torchreid: the JPEG loader, as it has no tensor cache)."""
    if "data_cache" in train_kw:
        return train_kw["data_cache"]
    if option is not None:
        return option
    return TrainConfig.data_cache if model == "hacnn" else "none"


def run_arm(arm: str, seed: int, a, budget: float, size: str, cache: Path) -> dict:
    model, _, model_kw, train_kw = parse_arm(arm)
    train_kw = {**train_kw, "data_cache": data_cache_of(model, train_kw, a.data_cache)}
    key = {"arm": arm, "seed": seed, "budget_s": budget, "dataset": a.dataset, **PLANNER,
           "root": None if a.root is None else str(a.root.resolve()), "synthetic_size": size,
           "data_cache": train_kw["data_cache"], "quick": a.quick, "kernel": kernel_path(),
           # the arm's resolved training settings: a row cached under other package defaults
           # (the same arm name, e.g. hacnn/default before K = 2) is not reused
           "train": {k: v for k, v in TrainConfig(**train_kw).to_dict().items() if k != "data_cache"}}
    key = json.loads(json.dumps(key))           # as a cached row reads back (tuples as lists)
    if cache.is_file() and not a.force:
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            if row["key"] == key:
                return row
    model_cfg = {**(TINY_MODEL if a.quick else {}), **model_kw}
    start = time.perf_counter()
    run = run_experiment(a.dataset, a.out / arm.replace("/", "_").replace("=", "-") / f"s{seed}",
                         root=a.root, synthetic_size=size, force=True, model=model_cfg or None,
                         device=a.device, progress=False, verbose=False, seed=seed, time_budget=budget,
                         eval_every=1, workers=a.workers,
                         build_model=TorchreidAsHACNN if model == "torchreid" else None, **train_kw)
    hist = [r for r in run.history if "epoch_time_s" in r]
    images = sum(r["images_per_s"] * r["epoch_time_s"] for r in hist)
    # decoding the tensor cache happens before the budget starts: its seconds count in images/s
    build_s = getattr(getattr(run.trainer.train_loader, "cache", None), "build_s", 0.0)
    plan = run.trainer.plan
    row = {"key": key, "rank1": 100 * run.final["rank1"], "mAP": 100 * run.final["mAP"],
           "epochs": plan["epochs"], "steps": plan["total_steps"], "bound": plan["bound"],
           "steps_per_epoch": plan["steps_per_epoch"],
           "images_per_s": images / (sum(r["epoch_time_s"] for r in hist) + build_s),
           "cache_build_s": build_s,
           "train_acc": 100 * hist[-1]["acc_global"], "recipe": run.trainer.config.recipe,
           "lr": run.trainer.config.lr, "wall_s": time.perf_counter() - start,
           "when": time.strftime("%Y-%m-%d %H:%M"),
           # the learning curve (every epoch is evaluated; evaluation is outside the budget)
           "curve": [{k: r.get(k) for k in ("epoch", "loss", "lr", "acc_global", "rank1", "mAP")}
                     for r in run.history]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arms", nargs="+", default=["torchreid/adam", "hacnn/default"],
                   help="MODEL/RECIPE[/key=value,...]; differences are paired against the first")
    p.add_argument("--budget", type=parse_duration, default=None, help="training time per run (default 10m)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dataset", choices=DATASET_NAMES, default="synthetic")
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--synthetic-size", default=None, help="default: small (--quick: tiny)")
    p.add_argument("--data-cache", choices=DATA_CACHES, default=None,
                   help="every arm's data path (default: each model's own: hacnn's TrainConfig default, "
                        "auto; torchreid's JPEG loader); an arm's data_cache=... pair overrides it")
    p.add_argument("--device", default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/bench_budget"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--force", action="store_true", help="re-run arms found in OUT/results.jsonl")
    p.add_argument("--table", type=Path, default=None, help="also write the table (Markdown) here")
    p.add_argument("--quick", action="store_true", help="tiny synthetic set, reduced model, 20 s a run")
    p.add_argument("--combine", type=Path, nargs="+", default=None, metavar="JSON",
                   help="train nothing: pair --arms from tables this script published (their .json), "
                        "which must share the machine and seeds (e.g. torchreid's runs of one day "
                        "against a later hacnn arm); ARM@N takes the arm from the N-th file")
    a = p.parse_args(argv)
    if a.combine:
        return combine(a.combine, a.arms, a.table, argv)
    for arm in a.arms:          # every arm checked before anything runs
        parse_arm(arm)
    set_threads(a.threads)
    budget = a.budget or (20.0 if a.quick else 600.0)
    size = a.synthetic_size or ("tiny" if a.quick else "small")
    print(f"{machine()}; {a.dataset}" + (f" ({size})" if a.dataset == "synthetic" else f" ({a.root})")
          + f", {budget:g} s of training per run, seeds {a.seeds}", flush=True)
    rows: dict[str, list[dict]] = {arm: [] for arm in a.arms}
    for seed in a.seeds:
        for arm in a.arms:
            r = run_arm(arm, seed, a, budget, size, a.out / "results.jsonl")
            rows[arm].append(r)
            print(f"  {arm:34s} seed {seed}: Rank-1 {r['rank1']:5.1f}  mAP {r['mAP']:5.1f} | {r['epochs']} "
                  f"epochs, {r['images_per_s']:.0f} img/s, train acc {r['train_acc']:.0f}% "
                  f"(ends by {r['bound']})", flush=True)
    table = markdown_table(rows, a.arms[0])
    note = f"{len(a.seeds)} seeds ({', '.join(map(str, a.seeds))}); differences paired by seed; " \
           "an interval that excludes 0 is beyond seed noise"
    print("\n" + table + "\n" + note)
    if a.table is not None:
        when = sorted(r["when"][:10] for rs in rows.values() for r in rs)      # rows may come from the cache
        ran = when[0] if when[0] == when[-1] else f"{when[0]} to {when[-1]}"
        head = (f"`python benchmarks/{Path(__file__).name} {' '.join(argv if argv is not None else sys.argv[1:])}`"
                f"\n\n{machine()}; runs of {ran}; {budget:g} s of training per run.\n\n")
        a.table.parent.mkdir(parents=True, exist_ok=True)
        a.table.write_text(head + table + "\n" + note + "\n")
        summary = {"command": head.split("`")[1], "machine": machine(), "date": ran,
                   "budget_s": budget, "dataset": a.dataset, "seeds": a.seeds,
                   "arms": {arm: {"rank1": summarize([r["rank1"] for r in rs])._asdict(),
                                  "mAP": summarize([r["mAP"] for r in rs])._asdict(),
                                  "runs": [{**{k: r[k] for k in ("rank1", "mAP", "steps", "images_per_s")},
                                            "epochs": _epochs(r)} for r in rs]} for arm, rs in rows.items()}}
        a.table.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {a.table} and {a.table.with_suffix('.json')}")


def combine(files: list[Path], arms: list[str], table: Path | None, argv: list[str] | None) -> None:
    """The table of ``arms`` from published ``.json`` summaries, paired by seed (``--combine``)."""
    published = []
    for f in files:
        try:
            published.append(json.loads(f.read_text()))
        except (OSError, ValueError) as e:
            raise SystemExit(f"--combine: {f} is not a table this script wrote ({e})")
    for f, d in zip(files, published):
        for field in ("machine", "seeds", "budget_s", "dataset"):
            if d.get(field) != published[0].get(field):
                raise SystemExit(f"--combine: {f} has {field} {d.get(field)!r}, {files[0]} has "
                                 f"{published[0].get(field)!r}: only runs of one machine, budget, data "
                                 "and seeds can be paired")
    rows = {}
    for label in arms:          # ARM (the first file that holds it) or ARM@N (the N-th file's, from 1)
        arm, _, nth = label.partition("@")
        pool = published if not nth else published[int(nth) - 1:int(nth)] if nth.isdigit() else []
        found = [d["arms"][arm]["runs"] for d in pool if arm in d.get("arms", {})]
        if not found:
            raise SystemExit(f"--combine: no file holds the arm {label!r} (arms: "
                             f"{sorted({x for d in published for x in d.get('arms', {})})})")
        rows[label] = found[0]
    seeds = published[0]["seeds"]
    out = markdown_table(rows, arms[0]) + f"\n{len(seeds)} seeds ({', '.join(map(str, seeds))}); " \
        "differences paired by seed; an interval that excludes 0 is beyond seed noise"
    print(out)
    if table is not None:
        dates = ", ".join(sorted({d["date"] for d in published}))
        head = (f"`python benchmarks/{Path(__file__).name} {' '.join(argv if argv is not None else sys.argv[1:])}`"
                f"\n\n{published[0]['machine']}; runs of {dates} (from {', '.join(map(str, files))}); "
                f"{published[0]['budget_s']:g} s of training per run.\n\n")
        table.write_text(head + out + "\n")
        print(f"wrote {table}")


def _epochs(row: dict) -> float:
    """Epochs trained, the last one counted in part (rows of before 2026-12-01: whole epochs begun)."""
    return row["steps"] / row["steps_per_epoch"] if row.get("steps_per_epoch") else row["epochs"]


def markdown_table(rows: dict[str, list[dict]], base: str) -> str:
    """Rank-1 / mAP mean +- sd per arm and each arm's paired difference from ``base`` [95 % CI]."""
    lines = [f"| arm | Rank-1 (%) | mAP (%) | epochs | img/s | Rank-1 - {base} [95 % CI] | "
             f"mAP - {base} [95 % CI] |", "|---|---|---|---|---|---|---|"]
    for arm, rs in rows.items():
        r1, mp = [r["rank1"] for r in rs], [r["mAP"] for r in rs]
        d1 = paired_difference(r1, [r["rank1"] for r in rows[base]])
        dm = paired_difference(mp, [r["mAP"] for r in rows[base]])
        epochs = summarize([_epochs(r) for r in rs]).mean
        ips = summarize([r["images_per_s"] for r in rs]).mean
        diffs = "baseline | baseline" if arm == base else f"{d1} | {dm}"
        lines.append(f"| {arm} | {summarize(r1)} | {summarize(mp)} | {epochs:.1f} | {ips:.0f} | {diffs} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
