"""The synthetic benchmark: determinism, Market-1501 layout, proportions,
attribute sharing, misalignment, safe writing, reader, CLI and figure.

File names are parsed here with our own regex, independently of the reader.
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hacnn.data import synthetic as S
from hacnn.data.market1501 import Market1501
from hacnn.data.synthetic_plan import (DISTRACTOR_FRACTION, JUNK_RATIO, LOCAL_ATTRIBUTES,
                                       SyntheticConfig, make_plan)
from hacnn.data.synthetic_render import PLAIN
from hacnn.data.synthetic_scene import render_image

NAME = re.compile(r"(-1|\d{4})_c([1-9])s([1-6])_(\d{6})_(\d{2})\.jpg")
SMALL = dict(size="tiny", num_train_ids=3, num_test_ids=3, images_per_id=4)


def parse(folder: Path) -> list[tuple[int, int, str]]:
    """(pid, camera 1-based, name) of every file, asserting the name pattern."""
    out = []
    for name in sorted(p.name for p in folder.iterdir()):
        m = NAME.fullmatch(name)
        assert m, f"bad file name {name}"
        out.append((int(m.group(1)), int(m.group(2)), name))
    return out


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return S.generate_synthetic(tmp_path_factory.mktemp("syn") / "tiny", size="tiny", workers=2)


def test_same_seed_same_bytes_whatever_the_workers(tiny, tmp_path):
    one = S.generate_synthetic(tmp_path / "w1", size="tiny", workers=1)
    a, b = digests(tiny), digests(one)
    assert len(a) == 2 + len(list(tiny.glob("*/*.jpg"))) and len(a) > 300
    assert a == b
    other = make_plan(SyntheticConfig.for_size("tiny", seed=1))[2][0]
    first = make_plan(SyntheticConfig.for_size("tiny"))[2][0]
    assert other["name"] != first["name"] or other["box"] != first["box"]


def test_layout_names_and_images(tiny):
    assert sorted(p.name for p in tiny.iterdir()) == [
        "bounding_box_test", "bounding_box_train", "images.csv", "query", "synthetic.json"]
    train, query = parse(tiny / "bounding_box_train"), parse(tiny / "query")
    gallery = parse(tiny / "bounding_box_test")
    assert all(pid > 0 for pid, _, _ in train + query)
    assert all(name.endswith("_00.jpg") for _, _, name in query)  # Market: hand-drawn queries
    assert {pid for pid, _, _ in gallery} >= {0, -1}
    junk = [name for pid, _, name in gallery if pid == -1]
    assert all(name.startswith("-1_c") for name in junk)
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        path = next((tiny / folder).iterdir())
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (64, 128))
    manifest = json.loads((tiny / "synthetic.json").read_text())
    assert manifest["format"] == "hacnn-synthetic" and manifest["version"] == S.VERSION
    assert manifest["params"]["misalignment"] == 0.25 and manifest["params"]["seed"] == 0
    assert manifest["files"] == {"bounding_box_train": len(train), "query": len(query),
                                 "bounding_box_test": len(gallery)}
    assert len(S.read_images_table(tiny)) == len(train) + len(query) + len(gallery)


def test_splits_queries_and_gallery_proportions(tiny):
    train, query = parse(tiny / "bounding_box_train"), parse(tiny / "query")
    gallery = parse(tiny / "bounding_box_test")
    train_ids, test_ids = {p for p, _, _ in train}, {p for p, _, _ in query}
    assert len(train_ids) == 24 and len(test_ids) == 16 and not train_ids & test_ids
    assert 6 <= len(train) / 24 <= 10  # about images_per_id = 8
    # one query per (id, camera) the id appears in, each with a match in another camera
    per_group = Counter((p, c) for p, c, _ in query)
    assert set(per_group.values()) == {1}
    cams = defaultdict(set)
    for p, c, _ in gallery:
        cams[p].add(c)
    assert set(per_group) == {(p, c) for p, c, _ in query}
    for p, c in per_group:
        assert cams[p] - {c}, f"query {p} cam {c} has no cross-camera match"
    assert {(p, c) for p, c, _ in query} == {(p, c) for p, c, _ in gallery if p > 0}
    people = sum(p > 0 for p, _, _ in gallery)
    distractors = sum(p == 0 for p, _, _ in gallery)
    junk = sum(p == -1 for p, _, _ in gallery)
    nonjunk = people + distractors
    assert abs(distractors - DISTRACTOR_FRACTION * nonjunk) <= 1
    assert abs(junk - JUNK_RATIO * nonjunk) <= 1
    assert (distractors, junk) == (17, 23) and abs(DISTRACTOR_FRACTION - 0.1755) < 1e-4


def test_reader_is_market1501_unchanged(tiny):
    ds = S.Synthetic(tiny)
    assert isinstance(ds, Market1501) and ds.root == tiny and ds.config.size == "tiny"
    assert sorted({pid for _, pid, _ in ds.train}) == list(range(24))
    assert len(ds.query) == len(list((tiny / "query").iterdir()))
    assert len(ds.gallery) == len(list((tiny / "bounding_box_test").iterdir()))
    assert {cam for _, _, cam in ds.train + ds.query + ds.gallery} == set(range(6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # split sizes differ from the real Market-1501
        market = Market1501(tiny)
    assert market.query == ds.query and market.gallery == ds.gallery


def test_attributes_are_shared_and_twins_differ_locally(tiny):
    ids = json.loads((tiny / "synthetic.json").read_text())["identities"]
    attrs = {pid: v["attributes"] for pid, v in ids.items()}
    assert len(ids) == 40
    assert max(Counter(a["upper"] for a in attrs.values()).values()) >= 4
    assert max(Counter(a["lower"] for a in attrs.values()).values()) >= 6
    local = {"shoes", "bag", "bag_color", "hat", "hat_color"}
    only_local = []
    for p, q in combinations(sorted(attrs), 2):
        diff = {k for k in attrs[p] if attrs[p][k] != attrs[q][k]}
        assert diff - {"build", "legs"}, f"{p} and {q} look identical"
        if diff <= local:
            only_local.append((p, q, diff))
    assert len(only_local) >= 3
    kinds = {next(iter(d - {"bag_color", "hat_color"}), None) for _, _, d in only_local}
    assert kinds & set(LOCAL_ATTRIBUTES)
    twins = [(p, v["twin_of"]) for p, v in ids.items() if v["twin_of"]]
    assert all(ids[f"{t:04d}"]["split"] == ids[p]["split"] for p, t in twins)


def foreground(img: np.ndarray) -> np.ndarray:
    return np.abs(img.astype(int) - np.array(PLAIN) * 255).max(-1) > 40


def test_misalignment_moves_and_cuts_the_person():
    plans = {m: make_plan(SyntheticConfig.for_size("tiny", misalignment=m))[2] for m in (0, 0.6)}
    people = {m: [r for r in recs if r["pid"] > 0] for m, recs in plans.items()}
    # same images, only the crop differs
    assert [r["name"] for r in people[0]] == [r["name"] for r in people[0.6]]
    assert [r["view"] for r in people[0]] == [r["view"] for r in people[0.6]]
    centre = {m: np.array([(b[0] + b[2]) / 2 for b in (r["person_box"] for r in recs)])
              for m, recs in people.items()}
    assert np.ptp(centre[0]) < 1e-6 and abs(centre[0][0] - 32) < 1e-6
    assert centre[0.6].std() > 3
    top_bottom = {m: np.array([(r["person_box"][1], r["person_box"][3]) for r in recs])
                  for m, recs in people.items()}
    assert (top_bottom[0][:, 0] > 0).all() and (top_bottom[0][:, 1] < 128).all()
    cut = (top_bottom[0.6][:, 0] < -2) | (top_bottom[0.6][:, 1] > 130)
    assert 0.1 < cut.mean() < 0.6
    # the recorded box is where the person is drawn (plain debug background)
    cams = S.make_plan(SyntheticConfig.for_size("tiny"))[1]
    checked = 0
    for r in people[0.6][::7]:
        x0, y0, x1, y1 = r["person_box"]
        if y0 < 1 or y1 > 127 or r["view"] not in ("front", "back"):
            continue
        mask = foreground(render_image(r, r["identity"], cams[r["camid"]], plain=True))
        rows = np.flatnonzero(mask.any(1))
        assert abs(rows[0] - y0) <= 2 and abs(rows[-1] + 1 - y1) <= 2
        torso = np.flatnonzero(mask[int(y0 + 0.3 * (y1 - y0))])
        assert abs((torso[0] + torso[-1] + 1) / 2 - (x0 + x1) / 2) <= 2.5
        checked += 1
    assert checked >= 5


def test_refuses_foreign_folder_and_leaves_nothing(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("user file")
    with pytest.raises(FileExistsError, match="not a synthetic benchmark"):
        S.generate_synthetic(target, workers=1, **SMALL)
    with pytest.raises(FileExistsError):
        S.generate_synthetic(target, workers=1, overwrite=True, **SMALL)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_reuse_other_parameters_and_overwrite(tmp_path):
    out = S.generate_synthetic(tmp_path / "b", workers=1, **SMALL)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert S.generate_synthetic(tmp_path / "b", workers=2, **SMALL) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(FileExistsError, match="other parameters.*seed"):
        S.generate_synthetic(out, workers=1, seed=3, **SMALL)
    S.generate_synthetic(out, workers=1, seed=3, overwrite=True, **SMALL)
    assert S.read_manifest(out)["params"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp folders left


def test_interrupted_generation_writes_nothing(tmp_path, monkeypatch):
    def boom(job):
        raise KeyboardInterrupt
    monkeypatch.setattr(S, "_render_chunk", boom)
    with pytest.raises(KeyboardInterrupt):
        S.generate_synthetic(tmp_path / "c", workers=1, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_synthetic_default_root_and_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("HACNN_DATA", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    cfg = SyntheticConfig.for_size("tiny", misalignment=0.5, seed=2)
    assert S.default_root(cfg) == tmp_path / "data" / "synthetic" / "tiny-m0.5-s2"
    custom = SyntheticConfig.for_size("tiny", num_train_ids=3)
    assert re.fullmatch(r"tiny-m0\.25-s0-[0-9a-f]{8}", custom.name)
    (tmp_path / "data" / "other.txt").write_text("x")  # a data root with other content
    ds = S.Synthetic(tmp_path / "data", workers=1, **SMALL)
    assert ds.root == tmp_path / "data" / "synthetic" / ds.config.name
    assert S.Synthetic(ds.root).manifest == ds.manifest  # read back, no parameters needed
    cached = S.Synthetic(workers=1, **SMALL)  # default root: $HACNN_DATA/synthetic/<name>
    assert cached.root == tmp_path / "data" / "synthetic" / cached.config.name
    manifest = json.loads((cached.root / "synthetic.json").read_text())
    manifest["version"] = 0  # an outdated benchmark in our cache is replaced
    (cached.root / "synthetic.json").write_text(json.dumps(manifest))
    assert S.Synthetic(workers=1, **SMALL).manifest["version"] == S.VERSION
    monkeypatch.setenv("HACNN_DATA", str(tmp_path / "missing" / "nope"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert S.default_root(cfg) == tmp_path / "cache" / "hacnn" / "synthetic" / cfg.name


def test_config_validation():
    cfg = SyntheticConfig.for_size("tiny", misalignment=0.1 + 0.2, seed=np.int64(3))
    assert (cfg.misalignment, type(cfg.seed)) == (0.3, int) and cfg.name == "tiny-m0.3-s3"
    with pytest.raises(ValueError, match="misalignment"):
        SyntheticConfig.for_size("tiny", misalignment=1.5)
    with pytest.raises(ValueError, match="num_cameras"):
        SyntheticConfig.for_size("tiny", num_cameras=10)
    with pytest.raises(ValueError, match="size"):
        SyntheticConfig.for_size("huge")


def test_cli_and_figure(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "cli"), "--ids", "3", "--test-ids", "3",
            "--images-per-id", "4", "--workers", "1", "--size", "tiny"]
    assert S.main_synth(argv) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'cli'}: 3 train ids")
    assert S.main_synth(argv + ["--figure", str(tmp_path / "f.png")]) == 0
    assert capsys.readouterr().out.startswith("reused")
    with Image.open(tmp_path / "f.png") as im:
        assert im.size[0] > 400 and im.size[1] > 300
