"""Bad input across the package: one clear error, naming what and where, nothing left behind.

One table, one parametrised test. Each case builds its input under
``tmp_path`` and returns the action to try and the message it must give; the
test snapshots the whole ``tmp_path`` tree (names and sizes) before and after
the action, so a case that half-made a run folder, a checkpoint, a temp file
or a benchmark would fail. Every message must name the offending path or
value (the patterns below hold it, escaped).

Odd but valid input (grayscale, RGBA, palette images) is converted, not an
error: see ``test_odd_image_modes_are_converted`` at the bottom.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from fixtures import make_cuhk03, make_market1501, market_name, write_image
from hacnn import HACNN
from hacnn.checkpoint import CheckpointError, atomic_save, load_model, safe_load
from hacnn.config import HACNNConfig, TrainConfig
from hacnn.data import (CUHK03, DatasetCountWarning, DatasetLayoutError, DukeMTMCreID, ImageReadError, Market1501,
                        build_train_loader)
from hacnn.data.synthetic import generate_synthetic
from hacnn.evaluation import compute_distance_matrix, evaluate_features, evaluate_rank
from hacnn.experiment import evaluate_checkpoint, run_experiment
from hacnn.training import RunExistsError, Trainer

TINY = dict(channels=(32, 64, 96), feat_dim=16, input_size=(32, 16),
            local_sizes=((8, 8), (4, 4), (2, 2)))
# train: 3 ids x 2 images, so a P x K loader (P=2, K=2) can be built
# the small trees are subsets of the real benchmarks: their count warnings are expected
pytestmark = [pytest.mark.filterwarnings("ignore::hacnn.data.DatasetCountWarning"),
              pytest.mark.usefixtures("one_thread")]
SMALL_MARKET = {"bounding_box_train": [(2, 1), (2, 2), (5, 1), (5, 3), (9, 2), (9, 4)],
                "query": [(1, 1), (3, 2)],
                "bounding_box_test": [(1, 2), (3, 3), (0, 4), (-1, 1)]}


def esc(value) -> str:
    """A path or value as it appears in a message (``repr`` quotes or bare), regex-escaped."""
    return re.escape(str(value))


def market(tmp: Path, spec=SMALL_MARKET) -> Path:
    """A small Market-1501 tree; returns the data root."""
    make_market1501(tmp / "data", spec=spec)
    return tmp / "data"


def tiny_checkpoint(path: Path, num_classes: int = 4, **config) -> Path:
    torch.manual_seed(0)
    model = HACNN(num_classes, **{**TINY, **config})
    atomic_save({"format": "hacnn", "version": 1, "config": model.config.to_dict(),
                 "model": model.state_dict()}, path)
    return path


def first_image(root: Path, split: str = "bounding_box_train") -> Path:
    return sorted((root / "Market-1501-v15.09.15" / split).glob("*.jpg"))[0]


# ----------------------------------------------------------------------------- cases
# Each case: setup(tmp_path, monkeypatch) -> (action, regex the message must match).

Setup = Callable[[Path, pytest.MonkeyPatch], tuple[Callable[[], object], str]]


@dataclass(frozen=True)
class Case:
    id: str
    error: type[BaseException]
    setup: Setup


def _missing_root(tmp, mp):
    return lambda: Market1501(tmp / "no_such_folder"), rf"data root '{esc(tmp / 'no_such_folder')}' is not a folder"


def _no_root_no_env(tmp, mp):
    mp.delenv("HACNN_DATA", raising=False)
    return lambda: DukeMTMCreID(None), r"no data root.*HACNN_DATA"


def _wrong_layout(tmp, mp):
    root = market(tmp)
    for f in (root / "Market-1501-v15.09.15" / "query").iterdir():
        f.unlink()
    (root / "Market-1501-v15.09.15" / "query").rmdir()
    return lambda: Market1501(root), rf"'{esc(root / 'Market-1501-v15.09.15')}' is incomplete: missing query"


def _duke_reads_market(tmp, mp):
    root = market(tmp)                                   # Market names in a Duke folder
    (root / "Market-1501-v15.09.15").rename(root / "DukeMTMC-reID")
    bad = sorted((root / "DukeMTMC-reID" / "bounding_box_train").glob("*.jpg"))[0]
    return lambda: DukeMTMCreID(root), rf"unexpected file name '{esc(bad)}': expected PPPP_cC_fFFFFFFF"


def _misnamed_file(tmp, mp):
    root = market(tmp)
    bad = write_image(root / "Market-1501-v15.09.15" / "bounding_box_train" / "0002_c1_000451_03.jpg")
    return lambda: Market1501(root), rf"unexpected file name '{esc(bad)}': expected PPPP_cCsS"


def _camera_out_of_range(tmp, mp):
    root = market(tmp)
    bad = write_image(root / "Market-1501-v15.09.15" / "query" / market_name(4, 8, 1))
    return lambda: Market1501(root), rf"'{esc(bad)}': camera 8 outside 1\.\.6"


def _empty_split(tmp, mp):
    spec = {**SMALL_MARKET, "query": [(0, 1), (-1, 2)]}   # only distractor / junk: none kept
    root = market(tmp, spec)
    return lambda: Market1501(root), rf"query split is empty \(read from '{esc(root / 'Market-1501-v15.09.15')}'\)"


def _cuhk03_config_wrong_shape(tmp, mp):
    home = make_cuhk03(tmp / "data", raw=False, configs=("labeled",))
    path = home / "cuhk03_new_protocol_config_labeled.mat"
    names = np.empty((3, 1), dtype=object)
    names[:, 0] = ["1_001_1_01.png", "1_001_2_06.png", "1_002_1_01.png"]
    savemat(path, {"filelist": names, "labels": np.ones((2, 1)), "camId": np.ones((3, 1)),
                   "train_idx": np.ones((1, 1)), "query_idx": np.ones((1, 1)),
                   "gallery_idx": np.ones((1, 1))}, format="5")
    return lambda: CUHK03(tmp / "data"), rf"'{esc(path)}': filelist, labels and camId differ in length"


def _cuhk03_raw_mat_not_hdf5(tmp, mp):
    home = make_cuhk03(tmp / "data", raw=False, configs=("detected",))
    raw = home / "cuhk03_release" / "cuhk-03.mat"
    raw.parent.mkdir()
    savemat(raw, {"detected": np.zeros((2, 2))}, format="5")      # a v5 file, not v7.3
    return lambda: CUHK03(tmp / "data", labeled=False), rf"'{esc(raw)}' is not a readable MATLAB v7.3"


def _truncated_jpeg_in_loader(tmp, mp):
    root = market(tmp)
    bad = first_image(root)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    loader = build_train_loader(Market1501(root), batch_size=4, num_instances=2, height=32,
                                width=16, workers=0)
    return lambda: [b for b in loader], rf"cannot read image '{esc(bad)}'"


def _zero_byte_jpeg_in_loader(tmp, mp):
    root = market(tmp)
    bad = first_image(root)
    bad.write_bytes(b"")
    loader = build_train_loader(Market1501(root), batch_size=4, num_instances=2, height=32,
                                width=16, workers=0)
    return lambda: [b for b in loader], rf"cannot read image '{esc(bad)}': empty file \(0 bytes\)"


def _corrupt_jpeg_in_worker(tmp, mp):
    root = market(tmp)
    bad = first_image(root)
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG body" * 4)
    loader = build_train_loader(Market1501(root), batch_size=4, num_instances=2, height=32,
                                width=16, workers=1)
    return lambda: [b for b in loader], rf"cannot read image '{esc(bad)}'"


def _negative_epochs(tmp, mp):
    root = market(tmp)
    return (lambda: run_experiment("market1501", tmp / "run", root=root, epochs=-3, model=TINY,
                                   workers=0, progress=False)), r"epochs=-3"


def _zero_batch(tmp, mp):
    return lambda: TrainConfig(batch_size=0), r"batch_size=0"


def _batch_not_multiple_of_instances(tmp, mp):
    root = market(tmp)
    return (lambda: run_experiment("market1501", tmp / "run", root=root, batch_size=6,
                                   num_instances=4, model=TINY, workers=0, progress=False)), \
        r"batch_size \(6\) must be a multiple of num_instances \(4\)"


def _unknown_dataset(tmp, mp):
    return (lambda: run_experiment("market1502", tmp / "run", root=tmp, model=TINY,
                                   progress=False)), r"unknown dataset 'market1502'"


def _input_size_not_divisible(tmp, mp):
    root = market(tmp)
    model = {**TINY, "input_size": (100, 64)}
    return (lambda: run_experiment("market1501", tmp / "run", root=root, model=model, workers=0,
                                   progress=False)), r"multiples of 16 .*\(100, 64\)"


def _synthetic_bad_misalignment(tmp, mp):
    return (lambda: generate_synthetic(tmp / "synth", size="tiny", misalignment=1.5)), \
        r"misalignment must lie in \[0, 1\], got 1\.5"


def _synthetic_into_foreign_folder(tmp, mp):
    (tmp / "photos").mkdir()
    (tmp / "photos" / "holiday.jpg").write_bytes(b"mine")
    return (lambda: generate_synthetic(tmp / "photos", size="tiny")), \
        rf"'{esc(tmp / 'photos')}' exists and is not a synthetic benchmark"


def _run_folder_holds_a_run(tmp, mp):
    root = market(tmp)
    (tmp / "run").mkdir()
    tiny_checkpoint(tmp / "run" / "last.pth")
    (tmp / "run" / "log.csv").write_text("epoch\n1\n")
    return (lambda: run_experiment("market1501", tmp / "run", root=root, model=TINY, workers=0,
                                   progress=False)), \
        rf"'{esc(tmp / 'run')}' already holds a run \(last.pth, log.csv\).*--resume.*--force"


def _resume_without_checkpoint(tmp, mp):
    (tmp / "run").mkdir()
    return (lambda: run_experiment("market1501", tmp / "run", resume=True, progress=False)), \
        rf"cannot resume: '{esc(tmp / 'run')}' holds no last.pth"


def _resume_other_num_classes(tmp, mp):
    ckpt = tmp / "run" / "last.pth"
    torch.manual_seed(0)
    other = HACNN(3, **TINY)
    trainer = Trainer(other, [], TrainConfig(epochs=1, batch_size=4, num_instances=2, workers=0),
                      tmp / "run", device="cpu", progress=False)
    atomic_save(trainer.state_dict(), ckpt)
    mine = Trainer(HACNN(5, **TINY), [], TrainConfig(epochs=1, batch_size=4, num_instances=2, workers=0),
                   tmp / "run", device="cpu", progress=False)
    return lambda: mine.resume(), rf"{esc(ckpt)} does not fit this model.*classifier_global.weight.*\[3, 16\].*\[5, 16\]"


def _load_into_narrower_model(tmp, mp):
    ckpt = tiny_checkpoint(tmp / "w.pth")
    return (lambda: load_model(ckpt, channels=(16, 32, 48))), \
        rf"{esc(ckpt)} does not fit HACNN\(num_classes=4, channels=\(16, 32, 48\).*size mismatch for global_levels"


def _evaluate_checkpoint_weights_disagree_with_config(tmp, mp):
    # config says channels (32, 64, 96), weights are (64, 128, 192)
    ckpt = tmp / "w.pth"
    sd = HACNN(4, **{**TINY, "channels": (64, 128, 192)}).state_dict()
    atomic_save({"format": "hacnn", "version": 1, "config": HACNNConfig(num_classes=4, **TINY).to_dict(),
                 "model": sd}, ckpt)
    return (lambda: evaluate_checkpoint(ckpt, "market1501", root=tmp / "data")), \
        rf"{esc(ckpt)} does not fit HACNN"


def _truncated_checkpoint(tmp, mp):
    ckpt = tiny_checkpoint(tmp / "best.pth")
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])
    return lambda: load_model(ckpt), rf"cannot read checkpoint {esc(ckpt)} \(truncated"


def _missing_checkpoint(tmp, mp):
    return lambda: safe_load(tmp / "nope.pth"), rf"checkpoint not found: {esc(tmp / 'nope.pth')}"


def _not_a_checkpoint(tmp, mp):
    path = tmp / "notes.pth"
    path.write_text("these are my notes, not weights\n")
    return lambda: load_model(path), rf"cannot read checkpoint {esc(path)}"


def _checkpoint_without_weights(tmp, mp):
    path = tmp / "other.pth"
    atomic_save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, path)
    return lambda: load_model(path), r"holds no HA-CNN weights"


def _nan_features(tmp, mp):
    qf = torch.randn(3, 8)
    qf[1, 4] = float("nan")
    return lambda: compute_distance_matrix(qf, torch.randn(5, 8)), r"qf: expected finite values, received 1 NaN/inf"


def _inf_in_distmat(tmp, mp):
    d = np.random.rand(3, 4)
    d[2, 0] = np.inf
    ids = np.arange(3), np.arange(4), np.zeros(3, int), np.ones(4, int)
    return lambda: evaluate_rank(d, *ids), r"distmat rows 0\.\.2: expected finite values, received 1 NaN/inf"


def _empty_query(tmp, mp):
    return (lambda: evaluate_features(torch.empty(0, 8), torch.randn(5, 8), [], range(5), [], [1] * 5)), \
        r"qf: expected a non-empty 2-D \(num_items, dim\) matrix, received shape \(0, 8\)"


def _empty_gallery(tmp, mp):
    return lambda: compute_distance_matrix(torch.randn(3, 8), np.zeros((0, 8))), \
        r"gf: expected a non-empty 2-D .*received shape \(0, 8\)"


def _feature_lengths_differ(tmp, mp):
    return lambda: compute_distance_matrix(torch.randn(3, 8), torch.randn(5, 6)), \
        r"gf: expected feature dim 8 \(as qf\), received dim 6"


def _ids_length_differ(tmp, mp):
    return (lambda: evaluate_rank(np.random.rand(3, 4), [1, 2], [1, 2, 3, 4], [0, 0, 0], [1] * 4)), \
        r"q_pids: expected a 1-D array of length 3, received shape \(2,\)"


def _unknown_metric(tmp, mp):
    return lambda: compute_distance_matrix(torch.randn(3, 8), torch.randn(5, 8), metric="manhattan"), \
        r"metric: expected one of \['cosine', 'euclidean'\], received 'manhattan'"


CASES = [
    Case("missing-data-root", DatasetLayoutError, _missing_root),
    Case("no-root-and-no-HACNN_DATA", DatasetLayoutError, _no_root_no_env),
    Case("wrong-layout-no-query-folder", DatasetLayoutError, _wrong_layout),
    Case("misnamed-file", DatasetLayoutError, _misnamed_file),
    Case("duke-reader-on-market-names", DatasetLayoutError, _duke_reads_market),
    Case("camera-out-of-range", DatasetLayoutError, _camera_out_of_range),
    Case("empty-split", DatasetLayoutError, _empty_split),
    Case("cuhk03-mat-wrong-shape", DatasetLayoutError, _cuhk03_config_wrong_shape),
    Case("cuhk03-raw-mat-not-v7.3", DatasetLayoutError, _cuhk03_raw_mat_not_hdf5),
    Case("truncated-jpeg", ImageReadError, _truncated_jpeg_in_loader),
    Case("zero-byte-jpeg", ImageReadError, _zero_byte_jpeg_in_loader),
    Case("corrupt-jpeg-in-worker", ImageReadError, _corrupt_jpeg_in_worker),
    Case("negative-epochs", ValueError, _negative_epochs),
    Case("zero-batch", ValueError, _zero_batch),
    Case("batch-not-multiple-of-instances", ValueError, _batch_not_multiple_of_instances),
    Case("unknown-dataset", ValueError, _unknown_dataset),
    Case("input-size-not-divisible", ValueError, _input_size_not_divisible),
    Case("synthetic-misalignment-out-of-range", ValueError, _synthetic_bad_misalignment),
    Case("synthetic-into-foreign-folder", FileExistsError, _synthetic_into_foreign_folder),
    Case("output-folder-holds-a-run", RunExistsError, _run_folder_holds_a_run),
    Case("resume-without-checkpoint", FileNotFoundError, _resume_without_checkpoint),
    Case("resume-other-number-of-classes", CheckpointError, _resume_other_num_classes),
    Case("load-into-narrower-model", CheckpointError, _load_into_narrower_model),
    Case("checkpoint-weights-disagree-with-config", CheckpointError,
         _evaluate_checkpoint_weights_disagree_with_config),
    Case("truncated-checkpoint", CheckpointError, _truncated_checkpoint),
    Case("missing-checkpoint", CheckpointError, _missing_checkpoint),
    Case("text-file-as-checkpoint", CheckpointError, _not_a_checkpoint),
    Case("checkpoint-without-hacnn-weights", CheckpointError, _checkpoint_without_weights),
    Case("nan-features", ValueError, _nan_features),
    Case("inf-in-distance-matrix", ValueError, _inf_in_distmat),
    Case("empty-query", ValueError, _empty_query),
    Case("empty-gallery", ValueError, _empty_gallery),
    Case("feature-lengths-differ", ValueError, _feature_lengths_differ),
    Case("id-lengths-differ", ValueError, _ids_length_differ),
    Case("unknown-metric", ValueError, _unknown_metric),
]


def snapshot(folder: Path) -> dict[str, int]:
    """Every file and folder under ``folder`` (hidden ones included) -> size (-1: folder)."""
    return {str(p.relative_to(folder)): (-1 if p.is_dir() else p.stat().st_size)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_error_and_leaves_nothing(case, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    action, pattern = case.setup(work, monkeypatch)
    before = snapshot(work)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(case.error, match=pattern) as info:
            action()
    assert type(info.value).__name__ != "Exception"
    message = str(info.value)
    assert "\n" not in message.strip() and len(message) < 600, message   # one line, not a dump
    assert snapshot(work) == before, "the failed call left files behind (or removed some)"
    hacnn_warnings = [w for w in caught if not issubclass(w.category, DatasetCountWarning)
                      and "hacnn" in str(w.filename)]
    assert not hacnn_warnings, [str(w.message) for w in hacnn_warnings]


def test_table_is_large_enough():
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)


# ----------------------------------------------------------------------------- converted, not errors

@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "I;16"])
def test_odd_image_modes_are_converted(tmp_path, mode):
    """Through the reader and the training loader: a 3-channel batch, no error.

    Pillow reads a file by its content, so a PNG (the only way to keep an
    alpha channel or 16-bit gray) under a ``.jpg`` name is read as such.
    """
    root = market(tmp_path)
    for path in (root / "Market-1501-v15.09.15" / "bounding_box_train").glob("*.jpg"):
        image = Image.new("I;16", (8, 16), 4000) if mode == "I;16" else \
            Image.new("RGB", (8, 16), (200, 30, 90)).convert(mode)
        image.save(path, format="JPEG" if mode in ("L", "CMYK") else "PNG")
    loader = build_train_loader(Market1501(root), batch_size=4, num_instances=2, height=32,
                                width=16, workers=0, normalize=False)
    images = torch.cat([batch[0] for batch in loader])
    assert images.shape[1:] == (3, 32, 16) and torch.isfinite(images).all()
    assert 0 <= images.min() and images.max() <= 1
