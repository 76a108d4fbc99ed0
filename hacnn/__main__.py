"""Command line: ``python -m hacnn {train,evaluate,convert,synth,extract,index,search,export,reproduce} ...``.

Examples::

    python -m hacnn synth --size tiny
    python -m hacnn train --quick --out runs/quick
    python -m hacnn train --dataset market1501 --root ~/data --out runs/market
    python -m hacnn train --dataset folder --root ~/crops --test-ids 0.3 --out runs/mine
    python -m hacnn train --dataset cuhk03-pair --root ~/data/cuhk03_pair1
    python -m hacnn train --out runs/market --resume
    python -m hacnn train --recipe adam-cosine --time-budget 20m --out runs/budget
    torchrun --nproc_per_node 4 -m hacnn train --dataset market1501 --root ~/data --sync-bn
    python -m hacnn evaluate --weights runs/market/best.pth --dataset market1501 --flip
    python -m hacnn convert --from-torchreid hacnn_market.pth.tar --out hacnn_market.pth
    python -m hacnn extract --weights best.pth --images gallery/ --out gallery.npz
    python -m hacnn extract --weights best.pth --images crops/ --pattern '(?P<identity>[0-9]+)_.*' --out crops.npz
    python -m hacnn index --features gallery.npz --out gallery.faiss --mode hnsw --hnsw-m 32 --ef-search 128
    python -m hacnn search --weights best.pth --query q.jpg --gallery gallery.npz --out ranked/
    python -m hacnn search --weights best.pth --query q.jpg --gallery gallery.npz --index gallery.faiss --out ranked/
    python -m hacnn export --weights best.pth --out hacnn.onnx
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .config import DATA_CACHES, RECIPES, TrainConfig
from .schedule import SCHEDULES, parse_duration
from .training import RUN_JSON

DEFAULT_DATASET = "synthetic"


def _dataset_arguments(p: argparse.ArgumentParser, default_help: str) -> None:
    from .data.synthetic_plan import SIZES
    from .experiment import DATASET_NAMES

    p.add_argument("--dataset", choices=DATASET_NAMES, metavar="NAME",
                   help=f"one of {', '.join(DATASET_NAMES)} (default: {default_help})")
    p.add_argument("--root", type=Path, help="data root (default: $HACNN_DATA; the synthetic "
                   "benchmark is generated there or under ~/.cache/hacnn on first use)")
    p.add_argument("--synthetic-size", choices=tuple(SIZES),
                   help="size of the synthetic benchmark (default: default; small with --quick)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--merge-val", action="store_true", default=None,
                   help="msmt17: train on list_train + list_val (default: list_train only)")
    from .data.folder import add_folder_arguments
    add_folder_arguments(p)


def _dataset_options(args: argparse.Namespace) -> dict:
    """Reader keywords from the dataset flags (``--pattern``, ``--merge-val``, ...)."""
    from .data.folder import folder_options

    options = folder_options(args)
    if args.merge_val:
        if args.dataset != "msmt17":
            raise ValueError("--merge-val applies to --dataset msmt17")
        options["merge_val"] = True
    return options


def _train_arguments(p: argparse.ArgumentParser) -> None:
    _dataset_arguments(p, "synthetic; with --resume, the run's own")
    p.add_argument("--out", type=Path, help="run folder (default: runs/<dataset>-<recipe>, "
                   "runs/quick with --quick)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.pth")
    p.add_argument("--force", action="store_true", help="overwrite a previous run in --out")
    p.add_argument("--quick", action="store_true",
                   help="quick preset: small synthetic benchmark (100 training ids), 4 epochs, "
                   "Adam lr 1e-3 (~3 min on 2 CPU cores)")
    t = p.add_argument_group("training (defaults: the recipe's; see hacnn.config.RECIPES)")
    t.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="adam-triplet (default: adam + batch-hard triplet loss, weight 1, margin "
                   "0.3), adam (Adam 3e-4, 500 epochs, cross-entropy alone: torchreid's reproduction "
                   "of the paper), sgd (SGD 0.03, 300 epochs, lr x0.1 at 50%% and 75%%) or "
                   "adam-cosine (Adam 1e-3, 5%% linear warm-up then cosine to 0, label smoothing 0.1)")
    t.add_argument("--epochs", type=int, help="epochs (with --time-budget: at most this many)")
    t.add_argument("--time-budget", type=_duration, metavar="TIME",
                   help="train for this long (90s, 20m, 1.5h or seconds): the throughput is measured "
                   "over the first steps, then the schedule is planned to end with the budget or "
                   "--epochs, whichever comes first; the final evaluation follows the budget")
    t.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule over the run "
                   "(default: the recipe's; see hacnn.schedule)")
    t.add_argument("--warmup", type=float, help="warm-up as a fraction of the run (default: the recipe's)")
    t.add_argument("--batch-size", type=int, help="images per batch (default: 32)")
    t.add_argument("--num-instances", type=int, help="images per identity in a batch (default: 2)")
    t.add_argument("--lr", type=float, help="learning rate (default: the recipe's)")
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing (default: "
                   "the recipe's, else 0)")
    t.add_argument("--triplet-weight", type=float, help="add this weight x the batch-hard triplet loss "
                   "of each stream (Hermans et al. 2017; needs --num-instances >= 2; default: the "
                   "recipe's, else 0: cross-entropy only, as the paper)")
    t.add_argument("--random-erasing", type=float, metavar="P",
                   help="erase one random rectangle of a training image with probability P (Zhong et "
                   "al. 2020; torchreid uses 0.5; default: 0, the paper's flip + translation only)")
    t.add_argument("--amp", choices=("auto", "none", "bf16", "fp16"), default=None,
                   help="mixed precision: bf16 (CPU/CUDA), fp16 (CUDA) or none (default: auto = bf16 "
                   "autocast on a CPU where it was measured to train faster (AVX-512 BF16 on AMD), else fp32; --quick: none)")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on; same results, faster on CPU and tensor cores)")
    t.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this value")
    t.add_argument("--eval-every", type=int, help="evaluate every N epochs and after the last "
                   "(0: never; default: 10)")
    t.add_argument("--seed", type=int, help="seed of everything (default: 0)")
    t.add_argument("--sync-bn", action="store_true", default=None,
                   help="under torchrun: batch norm over the global batch (SyncBatchNorm), so N "
                   "processes train like one; --batch-size and --lr are always the global batch's")
    t.add_argument("--workers", type=int, help="data loader processes (default: cores - 1, at most 4)")
    t.add_argument("--data-cache", choices=DATA_CACHES, default=None,
                   help="decode the training images once into a uint8 tensor in host memory or on the "
                        "device and augment batches as tensor ops (the same batches; default: auto = memory "
                        "where it takes at most half the free memory, else none)")
    t.add_argument("--compile", action="store_true", default=None,
                   help="train through torch.compile (inductor): compiled on the first step, tens of "
                        "seconds on a CPU; see benchmarks/bench_training.py --compile for whether it pays")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    m = p.add_argument_group("model ablations (paper Table 6)")
    m.add_argument("--no-local", action="store_true", help="global stream only (no local branch)")
    m.add_argument("--no-soft", action="store_true", help="no soft (spatial + channel) attention")
    m.add_argument("--no-hard", action="store_true", help="fixed stripes instead of learned regions")
    m.add_argument("--no-cail", action="store_true", help="no cross-attention interaction learning")
    m.add_argument("--init", choices=("kaiming", "pytorch"), default=None,
                   help="weight initialisation (HACNNConfig.init; default: pytorch, as torchreid's)")
    m.add_argument("--local-bn", choices=("batched", "per_region"), default=None,
                   help="batch-norm statistics of the local stream in training: the T regions together "
                        "(default) or each region's own, as torchreid's region-by-region loop")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _train_keywords(args: argparse.Namespace) -> dict:
    keys = ("recipe", "epochs", "batch_size", "num_instances", "lr", "weight_decay",
            "label_smoothing", "amp", "channels_last", "grad_clip", "eval_every", "seed", "workers",
            "time_budget", "schedule", "warmup", "sync_bn", "data_cache", "compile", "triplet_weight",
            "random_erasing")
    return {k: getattr(args, k) for k in keys}


def run_train(args: argparse.Namespace) -> int:
    """``train``: one run into ``--out`` (never over an existing run without --resume/--force).

    Under torchrun (``torchrun --nproc_per_node N -m hacnn train ...``; multi-node: torchrun's
    ``--nnodes``, ``--node_rank``, ``--master_addr``, ``--master_port``) each process trains its
    share of every global batch with DDP (:mod:`hacnn.distributed`); rank 0 prints and writes.
    """
    from . import distributed
    from .experiment import ABLATIONS, format_result, run_experiment

    dataset = args.dataset or DEFAULT_DATASET
    if args.quick and dataset != "synthetic":
        raise ValueError("--quick trains on the synthetic benchmark; drop --dataset or --quick")
    out = args.out or Path("runs") / ("quick" if args.quick else f"{dataset}-{args.recipe or TrainConfig.recipe}")
    model = {field: False for flag, field in ABLATIONS.items() if getattr(args, flag)}
    for field in ("init", "local_bn"):
        if getattr(args, field) is not None:
            model[field] = getattr(args, field)
    try:
        result = run_experiment(dataset, out, root=args.root, synthetic_size=args.synthetic_size,
                                quick=args.quick, resume=args.resume, force=args.force, model=model,
                                device=args.device, progress=not args.no_progress, verbose=True,
                                dataset_options=_dataset_options(args), **_train_keywords(args))
        main = distributed.is_main()
    finally:
        distributed.cleanup()
    if not main:                                    # under torchrun: rank 0 reports
        return 0
    print(f"run folder: {result.out_dir} ({len(result.history)} epochs)")
    if result.final:
        print(format_result(result.final, f"final (epoch {result.final['epoch']}):"))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """``evaluate``: a checkpoint on a dataset's query/gallery split; prints the table."""
    from .experiment import evaluate_checkpoint, format_result

    dataset, root, size = args.dataset, args.root, args.synthetic_size
    options = _dataset_options(args)
    run_info = Path(args.weights).parent / RUN_JSON
    if dataset is None and run_info.is_file():      # a run folder's checkpoint: its own data
        saved = json.loads(run_info.read_text())
        dataset, size = saved["dataset"], size or saved.get("synthetic_size")
        root, options = root or saved.get("root"), saved.get("dataset_options", {})
    dataset = dataset or DEFAULT_DATASET
    result = evaluate_checkpoint(args.weights, dataset, root=root, synthetic_size=size,
                                 rerank=args.rerank, flip=args.flip, device=args.device,
                                 batch_size=args.batch_size, workers=args.workers,
                                 progress=not args.no_progress, dataset_options=options)
    title = f"{args.weights} on {dataset}" + (" + re-ranking" if args.rerank else "") + \
        (" + flip" if args.flip else "")
    print(format_result(result, title))
    print(f"({result.num_valid_queries} queries; {result.num_skipped_queries} without a match skipped)")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """``convert``: torchreid HACNN checkpoint <-> hacnn checkpoint (weights only, safe load)."""
    from .checkpoint import FORMAT, VERSION, atomic_save, model_state, safe_load
    from .config import HACNNConfig
    from .convert import from_torchreid, num_classes_of, to_torchreid
    from .model import HACNN

    if args.out.exists() and not args.force:
        raise FileExistsError(f"{args.out} exists; pass --force to overwrite it")
    if args.from_torchreid:
        sd = from_torchreid(safe_load(args.from_torchreid))
        config = HACNNConfig(num_classes=num_classes_of(sd))
        HACNN(config=config).load_state_dict(sd)          # fails loudly if it does not fit
        atomic_save({"format": FORMAT, "version": VERSION, "config": config.to_dict(), "model": sd}, args.out)
        print(f"wrote {args.out}: hacnn checkpoint, {config.num_classes} identities")
    else:
        sd, _ = model_state(safe_load(args.to_torchreid))
        atomic_save({"state_dict": to_torchreid(sd)}, args.out)
        print(f"wrote {args.out}: torchreid state dict ({{'state_dict': ...}}), {num_classes_of(sd)} identities")
    return 0


def run_synth(args: argparse.Namespace) -> int:
    """``synth``: generate the synthetic benchmark (hacnn.data.synthetic)."""
    from .data.synthetic import run_synth as synth

    synth(args)
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    """``reproduce``: the notebooks 00-09 with papermill into a run folder, then the results table.

    See :mod:`hacnn.reproduce`. Exit code 1 when a notebook fails (its partial
    output notebook stays in the run folder; the failing cell is named).
    """
    from .reproduce import reproduce

    if args.reference:
        from .reference import REFERENCE_DIR, publish

        if args.quick:
            raise ValueError("--reference and --quick exclude each other: the reference protocol "
                             "has one budget (hacnn.reference.REFERENCE)")
        publish(args.out or Path(REFERENCE_DIR), device=args.device or "cpu",
                log=lambda line: print(line, flush=True))
        return 0
    out = args.out
    if out is None:
        out = Path("runs") / time.strftime("%Y-%m-%d")
        if out.is_dir() and any(out.iterdir()) and not args.force:
            out = Path("runs") / time.strftime("%Y-%m-%d-%H%M%S")
    elif out.is_dir() and any(out.glob("*.ipynb")) and not args.force:
        raise FileExistsError(f"{out} already holds executed notebooks; pass --force to overwrite them")
    data_root = args.data_root
    if data_root is None and os.environ.get("HACNN_DATA"):
        data_root = Path(os.environ["HACNN_DATA"])
    print(f"[reproduce] {'quick' if args.quick else 'full'} run into {out}"
          + (f", real data from {data_root}" if data_root else ", synthetic benchmark only"), flush=True)
    return reproduce(out, quick=args.quick, data_root=data_root, seed=args.seed,
                     device=args.device or "cpu",
                     results_dir=None if args.quick else Path("results"))   # results/: full runs only


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hacnn", description="HA-CNN (Li, Zhu & Gong, CVPR 2018): train, evaluate, "
        "convert torchreid weights, generate the synthetic benchmark, reproduce the results.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("train", help="train HA-CNN on a dataset", description=(
        "Train HA-CNN from scratch (identity cross-entropy on the global and local heads) into "
        "--out: last.pth every epoch, best.pth by mAP, log.csv and log.json. A folder that holds "
        "a run is never overwritten without --resume or --force."))
    _train_arguments(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint", description=(
        "Evaluate a checkpoint (hacnn or torchreid) on a dataset's query/gallery split and print "
        "Rank-1/5/10/20, mAP and mINP."))
    p.add_argument("--weights", type=Path, required=True, help="hacnn or torchreid checkpoint")
    _dataset_arguments(p, "the one in run.json beside --weights, else synthetic")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    p.add_argument("--flip", action="store_true", help="average features of image and mirror image")
    p.add_argument("--batch-size", type=int, default=128, help="test batch size (default: 128)")
    p.add_argument("--workers", type=int, default=None, help="data loader processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("convert", help="convert torchreid <-> hacnn weights", description=(
        "Convert a torchreid HACNN checkpoint into a hacnn checkpoint (--from-torchreid) or back "
        "(--to-torchreid). Files are read with weights_only=True."))
    way = p.add_mutually_exclusive_group(required=True)
    way.add_argument("--from-torchreid", type=Path, metavar="IN", help="torchreid HACNN checkpoint to read")
    way.add_argument("--to-torchreid", type=Path, metavar="IN", help="hacnn checkpoint to read")
    p.add_argument("--out", type=Path, required=True, help="file to write")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(func=run_convert)

    from .data.synthetic import add_synth_arguments
    p = sub.add_parser("synth", help="generate the synthetic re-id benchmark",
                       description="Generate the deterministic synthetic re-id benchmark in "
                       "Market-1501's layout.")
    add_synth_arguments(p)
    p.set_defaults(func=run_synth)

    from .export import add_export_arguments
    from .features import add_extract_arguments
    from .index import add_index_arguments
    from .search import add_search_arguments
    for name, add, short, long in (
            ("extract", add_extract_arguments, "features of a folder of images into an .npz",
             "Extract the features of every image under --images (recursive, sorted) into --out "
             "(.npz: paths, features, pids/camids where the names carry them). Resumable; never a "
             "partial file."),
            ("index", add_index_arguments, "build a FAISS gallery index from an extract .npz",
             "Build a hacnn.index.GalleryIndex (exact, ivf or hnsw) over every row of a features .npz, in "
             "order (the ids search --index expects; ivf is trained on them), and save it atomically to "
             "--out (needs faiss: pip install -e '.[faiss]')."),
            ("search", add_search_arguments, "rank a gallery for query images",
             "Rank a gallery (a folder, or an .npz from extract) for each --query image: a CSV of "
             "the top-k and one figure per query."),
            ("export", add_export_arguments, "export the feature graph to ONNX",
             "Export the eval feature graph (fp32, optimised, dynamic batch axis) to ONNX with the "
             "TorchScript exporter (--dynamo: torch.export-based).")):
        add(sub.add_parser(name, help=short, description=long))

    p = sub.add_parser("reproduce", help="run the notebook sequence, gather the results table",
                       description="Run notebooks/00-09 with papermill (quick=False unless --quick) "
                       "into --out, refresh figures/, and write the results table (paper vs ours) "
                       "as CSV and Markdown to the run folder and results/.")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder for the executed notebooks (default: runs/<YYYY-MM-DD>)")
    p.add_argument("--quick", action="store_true", help="the notebooks' quick settings (minutes)")
    p.add_argument("--reference", action="store_true", help="the reference protocol (issue 17): "
                   "train the ablation ladder and misalignment sweep at 8 epochs x 3 seeds and the "
                   "reference weights (~3 h on 2 idle CPU cores, resumable run by run through the run "
                   "cache), execute notebooks 06-09 on them into --out (default results/reference)")
    p.add_argument("--data-root", type=Path, default=None, help="real data sets to train and "
                   "evaluate on as well (default: $HACNN_DATA if set; else synthetic only)")
    p.add_argument("--force", action="store_true", help="overwrite the executed notebooks in --out")
    p.add_argument("--seed", type=int, default=0, help="seed of everything (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="(kept for compatibility; no bars)")
    p.set_defaults(func=run_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .data import DatasetLayoutError, ImageReadError
    from .distributed import DistributedInitError
    from .training import NonFiniteLossError

    try:
        return args.func(args)
    except (FileExistsError, FileNotFoundError, CheckpointError, DatasetLayoutError,
            NonFiniteLossError, DistributedInitError, ValueError, ImageReadError, ImportError) as e:
        print(f"hacnn {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
