"""The main job: the notebook sequence with papermill, a run cache, one results table.

``python -m hacnn reproduce`` (``make reproduce``) executes ``notebooks/00_*``
to ``09_*`` with papermill into ``runs/<YYYY-MM-DD>/`` (``quick=False`` unless
``--quick``), so ``figures/`` is refreshed, then gathers the key numbers the
notebooks wrote (``06_training*.json``, ``09_ablations.json``) into one
results table, paper vs ours (:func:`results_table`), written as CSV and
Markdown to the run folder and to ``results/``, and printed. A notebook that
fails keeps its partial output notebook in the run folder; the runner names
the notebook and the cell and exits non-zero.

:func:`cached_run` is the content-addressed run cache the notebooks share:
a finished run with the same full configuration (data, model, training,
device) and the same kernel path (:func:`hacnn.reproducibility.kernel_path`:
torch version, CPU model and instruction set, oneDNN's ISA limit, thread
count) is loaded instead of retrained, so notebooks 06, 07 and 08 train the
quick model once. Training is deterministic for one kernel path, so a cache
hit gives the numbers a fresh run would; a run made under another kernel
path (another machine sharing the cache, ``ONEDNN_MAX_CPU_ISA=AVX2``, another
thread count) is never handed out as this one's. The key covers the
configuration, not the code: after changing the model, training or data
code, delete ``runs/cache`` (or point ``HACNN_RUN_CACHE`` elsewhere) so that
the notebooks retrain.

A run's *record* (its ``log.json`` and ``cache.json``, no weights) can be
kept where the cache does not live: :data:`RECORDS` holds those of the
published reference run (:mod:`hacnn.reference`), committed, so a run the
repository publishes is loaded from its record on a machine whose cache
lacks it instead of being trained again: the record of this kernel path if
there is one, else the record of the same settings made on another machine
(a published result, whose ``cache.json`` names the machine it ran on).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from .paper import BENCHMARKS, PAPER_RESULTS

CACHE_ENV = "HACNN_RUN_CACHE"
REPO_ROOT = Path(__file__).resolve().parents[1]
RECORDS = REPO_ROOT / "results" / "reference" / "runs"   # records of the published runs
NOT_RUN_NO_DATA = "not run (no data)"
NOT_RUN = "not run"
SYNTHETIC_NOTE = "ours only: the paper has no synthetic benchmark"
# Key-number files the notebooks write into ``results_dir`` (papermill parameter).
TRAINING_JSON = "06_training{suffix}.json"
ABLATIONS_JSON = "09_ablations.json"
# Notebook 06 with quick=False on the synthetic benchmark: the default size (200 train ids,
# ~6,000 images) for 2 epochs at Adam 1e-3, evaluated after each: 6.3 of the 25.6 min that
# `make reproduce` took on 2 CPU cores with AVX-512 BF16 (bf16 autocast, the default there;
# 7.7 min in fp32).
FULL_SYNTHETIC_EPOCHS = 2
FULL_SYNTHETIC_EVAL_EVERY = 1


# ----------------------------------------------------------------------------- run cache

def cache_root() -> Path:
    """``$HACNN_RUN_CACHE``, else ``runs/cache`` of this checkout, else ``~/.cache/hacnn/runs``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if (REPO_ROOT / "pyproject.toml").is_file() and os.access(REPO_ROOT, os.W_OK):
        return REPO_ROOT / "runs" / "cache"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "hacnn" / "runs"


@dataclass
class CachedRun:
    """A finished run, trained now or loaded from the cache."""

    out_dir: Path
    history: list[dict]          # one row per epoch (hacnn.logging_utils.LOG_COLUMNS)
    final: dict                  # the last evaluated row
    best: dict                   # the evaluated row with the best mAP
    config: dict                 # everything that went into the cache key
    reused: bool                 # loaded from the cache (True) or trained now (False)

    @property
    def from_record(self) -> bool:
        """Loaded from its record (:data:`RECORDS`): history and config, no checkpoint."""
        return not (self.out_dir / "last.pth").is_file()

    @property
    def weights(self) -> Path:
        """The run's checkpoint; for a run loaded from its record (no checkpoint), the reference
        weights exported from it (:mod:`hacnn.zoo`), else one clear error."""
        path = self.out_dir / "last.pth"
        if path.is_file():
            return path
        from .zoo import exported_from

        exported = exported_from(self.out_dir.name)
        if exported is None:
            raise FileNotFoundError(f"the run {self.out_dir.name} was loaded from its record "
                                    f"({self.out_dir}), which keeps no weights, and no reference weights "
                                    "were exported from it: train it again (delete the record) to get them")
        return exported


def run_config(dataset: str = "synthetic", *, root=None, synthetic_size: str | None = None,
               quick: bool = False, model: dict | None = None, device: str = "cpu",
               dataset_options: dict | None = None, **train) -> dict:
    """The full, resolved configuration of a run and its kernel path (the cache key's content).

    Resolves the quick preset and the recipe's defaults (``TrainConfig``) and
    the model's (``HACNNConfig``); for the synthetic benchmark the data are
    named by their generation parameters (not by a path), for real data sets
    by the resolved root.
    """
    import torch

    from .config import HACNNConfig, TrainConfig
    from .experiment import QUICK_DATA, QUICK_TRAIN
    from .reproducibility import kernel_path
    from .training import resolve_amp

    train = {k: v for k, v in train.items() if v is not None}
    if quick:
        synthetic_size = synthetic_size or QUICK_DATA["synthetic_size"]
        train = {**QUICK_TRAIN, **train}
    train_cfg = TrainConfig(**train).to_dict()
    train_cfg.pop("data_cache")                 # a speed setting: the same batches bit for bit
    # Fields added after runs were cached are left out at their neutral values, so the runs
    # cached before them keep their keys.
    for key, neutral in (("compile", False), ("triplet_weight", 0.0), ("random_erasing", 0.0)):
        if train_cfg[key] == neutral:
            train_cfg.pop(key)
    if "triplet_weight" not in train_cfg:
        train_cfg.pop("triplet_margin")
    train_cfg["amp"] = resolve_amp(train_cfg["amp"], device)      # "auto": what this device runs
    model_cfg = HACNNConfig(**(model or {})).to_dict()
    model_cfg.pop("num_classes")                                # comes from the data
    if model_cfg["local_bn"] == "batched":                      # added after runs were cached (above)
        model_cfg.pop("local_bn")
    data: dict = {"dataset": dataset}
    if dataset == "synthetic":
        from .data.synthetic import read_manifest
        from .data.synthetic_plan import SyntheticConfig

        manifest = read_manifest(root) if root is not None else None
        params = manifest["params"] if manifest else \
            asdict(SyntheticConfig.for_size(synthetic_size or "default"))
        data.update(synthetic=params, root=None if root is None else str(Path(root).absolute()))
        if manifest:
            data["root"] = None       # a benchmark folder is named by its parameters
    else:
        from .data import resolve_root

        data["root"] = str(resolve_root(root))
    if dataset_options:             # reader options (the folder reader's layout, pattern, split, ...)
        data["options"] = {k: v for k, v in sorted(dataset_options.items()) if v is not None}
    return {"data": data, "synthetic_size": synthetic_size, "model": model_cfg, "train": train_cfg,
            "device": torch.device(device).type, "kernel": kernel_path(device)}


def config_hash(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _finished(out: Path, config: dict) -> bool:
    """Whether ``out`` holds a finished run of ``config`` with its checkpoint (a cache hit)."""
    return _record_of(out) == json.loads(json.dumps(config, default=str)) and (out / "last.pth").is_file()


def _record_of(out: Path) -> dict | None:
    """The configuration of the finished run recorded in ``out`` (None: none there)."""
    try:
        log = json.loads((out / "log.json").read_text())
        saved = json.loads((out / "cache.json").read_text())
    except (OSError, ValueError):
        return None
    return saved if log.get("status") == "finished" else None


def _recorded(records: Path, name: str, config: dict) -> Path | None:
    """The record in ``records`` of a finished run of ``config``: ``name``'s own (the same
    kernel path) if kept, else one made under another kernel path (another CPU model or
    thread count; the same settings, data and precision). A record is a published result,
    not a cache entry: it is handed out on any machine and its ``cache.json`` says where it
    ran, where the cache hands out only what this kernel path would compute."""
    want = json.loads(json.dumps(config, default=str))
    if _record_of(Path(records) / name) == want:
        return Path(records) / name
    want = {k: v for k, v in want.items() if k != "kernel"}
    for out in sorted(Path(records).glob(f"{name.rsplit('-', 1)[0]}-*")):
        saved = _record_of(out)
        if saved is not None and {k: v for k, v in saved.items() if k != "kernel"} == want:
            return out
    return None


def record_run(run: "CachedRun", records: str | os.PathLike = RECORDS) -> Path:
    """Keep ``run``'s record (``log.json``, ``cache.json``) in ``records`` (see :data:`RECORDS`)."""
    out = Path(records) / run.out_dir.name
    if out.resolve() != run.out_dir.resolve():
        out.mkdir(parents=True, exist_ok=True)
        for name in ("log.json", "cache.json"):
            shutil.copy2(run.out_dir / name, out / name)
    return out


def _summarise(out: Path, history: list[dict], config: dict, reused: bool) -> CachedRun:
    evaluated = [r for r in history if r.get("mAP") is not None]
    final = evaluated[-1] if evaluated else {}
    best = max(evaluated, key=lambda r: r["mAP"]) if evaluated else {}
    return CachedRun(out, history, final, best, config, reused)


def cached_run(dataset: str = "synthetic", *, root=None, synthetic_size: str | None = None,
               quick: bool = False, model: dict | None = None, device: str = "cpu",
               cache: str | os.PathLike | None = None, progress: bool = False,
               dataset_options: dict | None = None, records: str | os.PathLike | None = RECORDS,
               **train) -> CachedRun:
    """Train (or load) the run these settings describe; returns a :class:`CachedRun`.

    The folder is ``<cache>/<dataset>-<hash>``, the hash of :func:`run_config`;
    a folder holding a finished run with the same configuration is loaded, one
    holding an unfinished run is trained again from scratch. ``train`` keywords
    are ``TrainConfig`` fields (``epochs``, ``seed``, ``recipe``, ...);
    ``model`` holds ``HACNNConfig`` switches (``hard_attention=False``, ...);
    ``dataset_options``: the reader's options (``hacnn.data.build_dataset``
    keywords, e.g. the folder reader's ``layout`` and ``pattern``), part of the key.
    ``records``: where a run missing from the cache is looked up as a record
    (:data:`RECORDS`; ``None``: nowhere) before it is trained.
    """
    from .experiment import run_experiment

    config = run_config(dataset, root=root, synthetic_size=synthetic_size, quick=quick,
                        model=model, device=device, dataset_options=dataset_options, **train)
    out = Path(cache or cache_root()) / f"{dataset}-{config_hash(config)}"
    if _finished(out, config):
        history = json.loads((out / "log.json").read_text())["epochs"]
        return _summarise(out, history, config, reused=True)
    kept = _recorded(records, out.name, config) if records is not None else None
    if kept is not None:       # its own config: the kernel path it ran under
        return _summarise(kept, json.loads((kept / "log.json").read_text())["epochs"],
                          json.loads((kept / "cache.json").read_text()), reused=True)
    result = run_experiment(dataset, out, root=root, synthetic_size=config["synthetic_size"],
                            quick=quick, force=True, model=model, device=device,
                            progress=progress, verbose=False, dataset_options=dataset_options,
                            **train)
    (out / "cache.json").write_text(json.dumps(config, indent=1, default=str) + "\n")
    return _summarise(out, result.history, config, reused=False)


def training_settings(dataset: str = "synthetic", *, quick: bool = True, epochs: int | None = None,
                      recipe: str | None = None, seed: int = 0) -> dict:
    """The :func:`cached_run` keywords of notebook 06's run (07 and 08 reuse them).

    ``quick``: the QUICK preset (small synthetic benchmark, 4 epochs, Adam 1e-3).
    Otherwise, on the synthetic benchmark: the ``default`` size for
    :data:`FULL_SYNTHETIC_EPOCHS` epochs at Adam 1e-3 (sized for the whole
    ``make reproduce`` to stay near half an hour on 2 CPU cores); on a real
    benchmark: the recipe's own settings (Adam 3e-4 for 500 epochs, or SGD),
    i.e. the paper-scale run, meant for a GPU. ``recipe``: None is
    ``TrainConfig``'s default (``"adam-triplet"``).
    """
    from .config import RECIPES, TrainConfig

    recipe = recipe or TrainConfig.recipe
    if dataset == "synthetic" and quick:
        return dict(dataset=dataset, quick=True, seed=seed, recipe=recipe, epochs=epochs)
    if dataset == "synthetic":      # the constant-Adam recipes at 1e-3, as the quick preset (QUICK_TRAIN)
        constant_adam = RECIPES[recipe]["optimizer"] == "adam" and "schedule" not in RECIPES[recipe]
        return dict(dataset=dataset, synthetic_size="default", seed=seed, recipe=recipe,
                    epochs=epochs or FULL_SYNTHETIC_EPOCHS, lr=1e-3 if constant_adam else None,
                    eval_every=FULL_SYNTHETIC_EVAL_EVERY)
    if quick:
        raise ValueError("quick=True trains on the synthetic benchmark; set quick=False for "
                         f"{dataset!r}")
    return dict(dataset=dataset, seed=seed, recipe=recipe, epochs=epochs)


# ----------------------------------------------------------------------------- results table

def _pct(value) -> str:
    return f"{100 * float(value):.1f}"


def results_table(ours: dict[str, dict], available: dict[str, bool] | None = None,
                  synthetic: dict[str, dict] | None = None):
    """Paper vs ours, one row per benchmark of the paper (+ our synthetic rows).

    ``ours``: row key (:data:`hacnn.paper.PAPER_RESULTS`) -> metrics with
    ``rank1`` and ``mAP`` as fractions (``RankResult.row()``); ``available``:
    row key -> whether the data set was found (a row without a result reads
    "not run (no data)" when it was not, "not run" when it was);
    ``synthetic``: label -> metrics of our synthetic-benchmark runs, which the
    paper has no row for. Numbers are strings in percent with one decimal;
    nothing is ever filled in for a benchmark that did not run.
    """
    import pandas as pd

    available = available or {}
    rows = []
    for key, paper in PAPER_RESULTS.items():
        row = {"benchmark": paper.benchmark, "protocol": paper.protocol,
               "paper Rank-1": f"{paper.rank1:.1f}", "paper mAP": f"{paper.mAP:.1f}"}
        if key in ours and ours[key].get("mAP") is not None:
            row.update({"ours Rank-1": _pct(ours[key]["rank1"]), "ours mAP": _pct(ours[key]["mAP"]),
                        "note": ours[key].get("note", "")})
        else:
            why = NOT_RUN if available.get(key) else NOT_RUN_NO_DATA
            row.update({"ours Rank-1": why, "ours mAP": why, "note": ""})
        rows.append(row)
    for label, metrics in (synthetic or {}).items():
        rows.append({"benchmark": "Synthetic (ours)", "protocol": label, "paper Rank-1": "-",
                     "paper mAP": "-", "ours Rank-1": _pct(metrics["rank1"]),
                     "ours mAP": _pct(metrics["mAP"]), "note": SYNTHETIC_NOTE})
    return pd.DataFrame(rows, columns=["benchmark", "protocol", "paper Rank-1", "paper mAP",
                                       "ours Rank-1", "ours mAP", "note"])


def to_markdown(df) -> str:
    """A pipe table (no tabulate dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def gather_results(results_dir: str | os.PathLike, data_root=None):
    """The results table from the key-number JSONs in ``results_dir`` (and a
    list of extra Markdown sections, e.g. the ablations of notebook 09)."""
    folder = Path(results_dir)
    ours, synthetic, sections = {}, {}, []
    for path in sorted(folder.glob("06_training*.json")):
        info = json.loads(path.read_text())
        for key, metrics in info.get("benchmarks", {}).items():
            if key == "synthetic":
                synthetic[info.get("label", "synthetic")] = metrics
            else:
                ours[key] = {**metrics, "note": info.get("label", "")}
    if (folder / ABLATIONS_JSON).is_file():
        import pandas as pd

        info = json.loads((folder / ABLATIONS_JSON).read_text())
        for title, rows in info.get("tables", {}).items():
            sections.append(f"### {title}\n\n" + to_markdown(pd.DataFrame(rows)))
    return results_table(ours, available_benchmarks(data_root), synthetic), sections


def available_benchmarks(data_root=None) -> dict[str, bool]:
    """Row key -> whether that benchmark's data are found under ``data_root``
    (default ``$HACNN_DATA``); never raises."""
    from .data import build_dataset

    found: dict[str, bool] = {}
    for key, (name, option) in BENCHMARKS.items():
        try:
            with warnings.catch_warnings():   # a subset's count warning is not news here
                warnings.simplefilter("ignore")
                build_dataset(name, data_root, **({"multi_query": True} if option == "multi_query" else {}))
            found[key] = True
        except Exception:  # noqa: BLE001 - any failure to read means "no data"
            found[key] = False
    return found


def write_results(df, folders, sections=(), title: str = "Results") -> list[Path]:
    """``results.csv`` and ``results.md`` into each folder; returns the paths."""
    written = []
    md = f"# {title}\n\nRank-1 / mAP in %. Paper: {CITATION_SHORT}. " \
         "Synthetic numbers are not comparable with the paper's.\n\n" + to_markdown(df)
    md += "".join("\n" + s for s in sections)
    for folder in folders:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        df.to_csv(folder / "results.csv", index=False)
        (folder / "results.md").write_text(md)
        written += [folder / "results.csv", folder / "results.md"]
    return written


CITATION_SHORT = "Li, Zhu & Gong, CVPR 2018, Tables 1-3"


# ----------------------------------------------------------------------------- the notebook runner

class NotebookFailed(RuntimeError):
    """A notebook of the sequence raised: which notebook, which cell, the error."""

    def __init__(self, notebook: str, output: Path, cell_index: int | None, ename: str, evalue: str):
        self.notebook, self.output, self.cell_index = notebook, output, cell_index
        self.ename, self.evalue = ename, evalue
        where = f"cell {cell_index}" if cell_index is not None else "before any cell ran"
        super().__init__(f"notebook {notebook} failed in {where}: {ename}: {evalue} "
                         f"(partial output kept in {output})")


def notebook_sequence(folder: str | os.PathLike | None = None) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` of ``folder`` (default: the checkout's), in order."""
    return sorted(Path(folder or REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def run_notebook(notebook: str | os.PathLike, output: str | os.PathLike, parameters: dict,
                 cwd: str | os.PathLike | None = None, kernel: str = "python3") -> Path:
    """Execute one notebook with papermill (only the parameters it declares are passed).

    Raises :class:`NotebookFailed` (the partial output notebook is kept) on an error.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    notebook, output = Path(notebook), Path(output)
    declared = pm.inspect_notebook(str(notebook))
    params = {k: v for k, v in parameters.items() if k in declared}
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(notebook), str(output), parameters=params, kernel_name=kernel,
                            cwd=str(cwd or notebook.parent), progress_bar=False, log_output=False)
    except PapermillExecutionError as e:
        raise NotebookFailed(notebook.name, output, e.cell_index, e.ename, e.evalue) from None
    return output


def run_sequence(out_dir: str | os.PathLike, *, quick: bool = False, data_root=None,
                 seed: int = 0, device: str = "cpu", notebooks=None, figures_dir=None,
                 log=None) -> list[dict]:
    """Run the notebooks in order into ``out_dir``; returns one dict per executed notebook.

    Notebook 06 runs once on the synthetic benchmark and once more per real
    benchmark found under ``data_root``. Stops at the first failure
    (:class:`NotebookFailed`).
    """
    log = log or (lambda line: print(line, flush=True))
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    common = {"quick": quick, "seed": seed, "device": device, "results_dir": str(out),
              "data_root": None if data_root is None else str(Path(data_root).absolute())}
    if figures_dir is not None:
        common["figures_dir"] = str(Path(figures_dir).absolute())
    found = available_benchmarks(data_root) if data_root is not None else {}
    real = sorted({BENCHMARKS[k][0] for k, ok in found.items() if ok})
    done = []
    for nb in notebooks if notebooks is not None else notebook_sequence():
        nb = Path(nb)
        runs = [(nb.name, {})]
        if nb.name.startswith("06_"):
            runs += [(f"{nb.stem}-{name}.ipynb", {"dataset": name, "quick": False}) for name in real]
        for name, extra in runs:
            start = time.perf_counter()
            log(f"[reproduce] {name} ...")
            run_notebook(nb, out / name, {**common, **extra})
            seconds = time.perf_counter() - start
            done.append({"notebook": name, "seconds": round(seconds, 1)})
            log(f"[reproduce] {name} done in {seconds / 60:.1f} min")
    return done


def reproduce(out_dir: str | os.PathLike, *, quick: bool = False, data_root=None, seed: int = 0,
              device: str = "cpu", results_dir: str | os.PathLike | None = REPO_ROOT / "results",
              notebooks=None, figures_dir=None) -> int:
    """The whole main job; returns the exit code (0, or 1 when a notebook failed)."""
    start = time.perf_counter()
    out = Path(out_dir)
    try:
        timings = run_sequence(out, quick=quick, data_root=data_root, seed=seed, device=device,
                               notebooks=notebooks, figures_dir=figures_dir)
    except NotebookFailed as e:
        print(f"[reproduce] FAILED: {e}", flush=True)
        return 1
    df, sections = gather_results(out, data_root)
    folders = [out] + ([Path(results_dir)] if results_dir is not None else [])
    write_results(df, folders, sections, title=f"Results ({'quick' if quick else 'full'} run)")
    (out / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    if results_dir is not None:
        shutil.copy(out / "timings.json", Path(results_dir) / "timings.json")
    print(to_markdown(df))
    for s in sections:
        print(s)
    print(f"[reproduce] {len(timings)} notebooks in {(time.perf_counter() - start) / 60:.1f} min; "
          f"executed notebooks in {out}")
    return 0
