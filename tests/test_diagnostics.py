"""Attention measures (hacnn.diagnostics) on hand-made cases, and the synthetic
benchmark's ground truth (hacnn.data.synthetic_truth) against its pixels."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from hacnn import HACNN
from hacnn.data import synthetic as S
from hacnn.data.synthetic_plan import SyntheticConfig, make_plan
from hacnn.data.synthetic_render import PLAIN
from hacnn.data.synthetic_scene import person_coverage, render_image
from hacnn.data.synthetic_truth import GroundTruth, ground_truth, person_items
from hacnn.diagnostics import (AttentionMeasures, box_iou, fisher_interval, measure_attention,
                               measure_batch, pearson, region_iou, soft_mass)
from hacnn.model import LevelExplanation

FEW = dict(size="tiny", num_train_ids=3, num_test_ids=3, images_per_id=4, misalignment=0.4)
H, W = 8, 4


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return S.generate_synthetic(tmp_path_factory.mktemp("gt") / "b", workers=1, **FEW)


# --- soft attention mass ---------------------------------------------------------

def person_mask() -> torch.Tensor:
    """(1, 8, 4): the person covers the 2x2-pixel cells (1, 0) and (2, 1) of a 4x2 grid,
    plus a half-covered pixel in cell (3, 1)."""
    m = torch.zeros(1, H, W)
    m[0, 2:4, 0:2] = 1
    m[0, 4:6, 2:4] = 1
    m[0, 6, 3] = 0.5
    return m


def test_attention_on_the_person_only_has_share_one():
    a = torch.zeros(1, 4, 2)
    a[0, 1, 0] = a[0, 2, 1] = 0.8            # exactly the cells the person fills
    share, above, area = soft_mass(a, person_mask())
    assert share.item() == pytest.approx(1) and above.item() == pytest.approx(1)
    assert area.item() == pytest.approx(8.5 / 32)


def test_uniform_attention_gets_the_area_share_and_torchreid_offset():
    m = person_mask()
    share, above, area = soft_mass(torch.full((1, 4, 2), 0.7), m)
    assert share.item() == pytest.approx(8.5 / 32) and area.item() == pytest.approx(8.5 / 32)
    assert math.isnan(above.item())          # a flat map has no part above its minimum
    # torchreid's range: 0.5 off the person, 1 on cells (1, 0) and (2, 1)
    a = torch.full((1, 4, 2), 0.5)
    a[0, 1, 0] = a[0, 2, 1] = 1.0
    share, above, _ = soft_mass(a, m)
    # mass on the person: 8 pixels x 1 + 0.5 coverage x 0.5; total: 8 x 1 + 24 x 0.5
    assert share.item() == pytest.approx((8 + 0.25) / 20)
    assert above.item() == pytest.approx(1)  # a - min is 0.5 on the 8 person pixels only


# --- regions against parts --------------------------------------------------------

def test_region_iou_exact_disjoint_half_and_order():
    parts = torch.tensor([[[0., 10.], [10., 30.], [30., 50.], [50., 60.]]])   # (1, 4, 2)
    size = (60, 16)
    exact = torch.tensor([[[0., 0, 16, 10], [0, 10, 16, 30], [0, 30, 16, 50], [0, 50, 16, 60]]])
    iou, covered = region_iou(exact[:, [2, 0, 3, 1]], parts, size)    # any order: sorted first
    torch.testing.assert_close(iou, torch.ones(1, 4))
    torch.testing.assert_close(covered, torch.ones(1, 4))
    iou, _ = region_iou(torch.tensor([[[0., 40, 16, 45]] * 4]), torch.tensor(
        [[[0., 10.], [10., 20.], [20., 30.], [50., 60.]]]), size)
    torch.testing.assert_close(iou, torch.zeros(1, 4))
    # half overlap: region rows [5, 15) vs part [0, 10): 5 / 15 = 1/3; the part is
    # half inside. Half the width: [0, 8) x [0, 10) vs the full-width stripe: 1/2.
    i, c = box_iou(torch.tensor([0., 5, 16, 15]), torch.tensor([0., 0, 16, 10]))
    assert (i.item(), c.item()) == (pytest.approx(1 / 3), pytest.approx(0.5))
    i, c = box_iou(torch.tensor([0., 0, 8, 10]), torch.tensor([0., 0, 16, 10]))
    assert (i.item(), c.item()) == (pytest.approx(0.5), pytest.approx(0.5))


def test_regions_are_clipped_to_the_image_and_cut_off_parts_left_out():
    size = (40, 16)
    parts = torch.tensor([[[-10., 10.], [10., 20.], [20., 38.], [41., 45.]]])  # feet cut off
    boxes = torch.tensor([[[0., -10, 16, 10], [0, 10, 16, 20], [0, 20, 16, 40], [0, 40, 16, 50]]])
    iou, covered = region_iou(boxes, parts, size)
    np.testing.assert_allclose(iou[0, :3].numpy(), [1, 1, 18 / 20])
    assert math.isnan(iou[0, 3].item()) and math.isnan(covered[0, 3].item())
    with pytest.raises(ValueError, match="one region per part"):
        region_iou(boxes[:, :3], parts, size)


# --- correlation ----------------------------------------------------------------

def test_pearson_against_numpy_constant_and_missing():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)
    y[:, 1] += 2 * x[:, 1]
    r, n = pearson(x, y)
    np.testing.assert_allclose(r.numpy(), [np.corrcoef(x[:, k], y[:, k])[0, 1] for k in range(3)],
                               rtol=1e-6)
    assert n.tolist() == [50] * 3
    x[:5, 0] = float("nan")
    r, n = pearson(x, y)
    assert n[0] == 45 and r[0].item() == pytest.approx(np.corrcoef(x[5:, 0], y[5:, 0])[0, 1])
    r, _ = pearson(torch.full((10,), 0.25), torch.randn(10, generator=g))
    assert math.isnan(r.item())
    low, high = fisher_interval(0.5, 28)      # atanh(0.5) +- 1.96 / 5
    assert (low, high) == (pytest.approx(math.tanh(0.549306 - 0.391993), abs=1e-5),
                           pytest.approx(math.tanh(0.549306 + 0.391993), abs=1e-5))


def following_batch(n: int = 12):
    """n crops where the person moves from 40 pixels up to 48 down and regions that
    lie exactly on each part: (levels of one level, ground truth)."""
    size = (160, 64)
    shift = torch.arange(n, dtype=torch.float32) * 8 - 40                     # (n,)
    extents = torch.tensor([[10., 35.], [35., 90.], [90., 145.], [145., 152.]])
    parts = extents + shift[:, None, None]                                      # (n, 4, 2)
    person = torch.stack([torch.full_like(shift, 16), parts[:, 0, 0], torch.full_like(shift, 48),
                          parts[:, 3, 1]], 1)
    truth = GroundTruth(tuple(f"q/{i}.jpg" for i in range(n)), person, parts,
                        torch.zeros(n, *size), size)
    ty = parts.mean(-1) / 160 * 2 - 1                                           # (n, 4)
    boxes = torch.stack([torch.zeros_like(ty), parts[..., 0], torch.full_like(ty, 64),
                         parts[..., 1]], -1)                                    # (n, 4, 4)
    theta = torch.stack([torch.zeros_like(ty), ty], -1)
    return [LevelExplanation(None, None, theta, boxes)], truth


def test_a_following_region_set_correlates_perfectly():
    levels, truth = following_batch()
    m = AttentionMeasures(**{k: v.numpy() for k, v in measure_batch(levels, truth).items()})
    r_offset, n_offset, r_part, n_part = m.correlations()
    np.testing.assert_allclose(r_offset, 1, rtol=1e-6)
    np.testing.assert_allclose(r_part, 1, rtol=1e-6)
    # the head leaves the crop at a shift of -40, the feet from +16 on
    assert n_offset.tolist() == [[12] * 4] and n_part.tolist() == [[11, 12, 12, 7]]
    table = m.table()
    assert list(table.index.get_level_values("region")) == ["r1", "r2", "r3", "r4"]
    assert table["part"].tolist() == ["head", "torso", "legs", "feet"]
    assert table["n_part"].tolist() == [11, 12, 12, 7]
    np.testing.assert_allclose(table["iou"], 1, rtol=1e-6)     # exactly on the parts
    assert table["share"].isna().all()                            # no soft map at this level
    shuffled = [levels[0]._replace(theta=levels[0].theta.flip(1), boxes=levels[0].boxes.flip(1))]
    again = measure_batch(shuffled, truth)                        # regions listed bottom up
    torch.testing.assert_close(again["ty"], measure_batch(levels, truth)["ty"])


# --- ground truth of the generated benchmark ---------------------------------------

def test_coverage_is_where_the_person_is_drawn(bench):
    cfg = SyntheticConfig(**S.read_manifest(bench)["params"])
    _, cams, records = make_plan(cfg)
    people = [r for r in records if r["pid"] > 0]
    corr = []
    for k, r in enumerate(people[::3]):
        cam = cams[r["camid"]]
        person, visible = person_coverage(r, r["identity"], cam)
        assert (visible <= person + 1e-6).all()
        plain = render_image(r, r["identity"], cam, plain=True)
        off = np.abs(plain.astype(int) - np.array(PLAIN) * 255).max(-1) > 1
        assert not off[person == 0].any()        # nothing drawn where nothing is covered
        assert off[person > 0.5].all()
        disk = np.asarray(Image.open(bench / r["folder"] / r["name"]), np.float32).mean(-1)
        inside = visible > 0.99                  # the crop on disk shows the same person there
        corr.append(np.corrcoef(disk[inside], plain.mean(-1)[inside])[0, 1])
    assert len(corr) >= 5 and np.median(corr) > 0.8


def test_ground_truth_at_input_size(bench):
    data = S.Synthetic(bench)
    items = person_items(data)
    assert items and all(pid > 0 for _, pid, _ in items)
    gt = ground_truth(bench, items[:6])
    assert gt.mask.shape == (6, 160, 64) and gt.size == (160, 64) and gt.has_person.all()
    rows = json.loads((bench / "synthetic.json").read_text())["params"]["height"]
    table = {r["name"]: r for r in S.read_images_table(bench)}
    for i, (path, _, _) in enumerate(items[:6]):
        r = table[path.rsplit("/", 1)[-1]]
        box = [float(r[f"person_{k}"]) for k in ("x0", "y0", "x1", "y1")]
        np.testing.assert_allclose(gt.person[i].numpy(), np.multiply(box, [1, 160 / rows] * 2),
                                   rtol=1e-5)
        # head top and soles are the person box's; parts tile the body top to bottom
        assert abs(gt.parts[i, 0, 0] - gt.person[i, 1]) < 0.2
        assert abs(gt.parts[i, -1, 1] - gt.person[i, 3]) < 0.2
        assert (gt.parts[i, 1:, 0] == gt.parts[i, :-1, 1]).all()
        ys = torch.nonzero(gt.mask[i] > 0.5)[:, 0]
        assert ys.min() >= gt.person[i, 1] - 2 and ys.max() + 1 <= gt.person[i, 3] + 2
    crop = ground_truth(data, items[:6], size=(rows, 64))
    small = torch.nn.functional.interpolate(gt.mask[:, None], size=(rows, 64), mode="area")[:, 0]
    assert (crop.mask - small).abs().mean() < 0.02    # resizing back gives the crop's mask
    assert gt.offset[0] == pytest.approx(float(gt.person[0, 1] + gt.person[0, 3]) / 2 - 80)


def test_ground_truth_errors(bench, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a synthetic benchmark"):
        ground_truth(tmp_path, ["query/x.jpg"])
    with pytest.raises(KeyError, match="not images of the synthetic benchmark.*nope.jpg"):
        ground_truth(bench, ["query/nope.jpg"])
    old = tmp_path / "old"
    old.mkdir()
    manifest = S.read_manifest(bench)
    (old / "synthetic.json").write_text(json.dumps({**manifest, "version": S.VERSION + 1}))
    with pytest.raises(ValueError, match="version"):
        ground_truth(old, ["query/x.jpg"])


def test_measure_attention_of_fixed_stripes(bench, one_thread):
    model = HACNN(3, channels=(16, 32, 48), stem_channels=8, feat_dim=16, hard_attention=False)
    model.train()
    items = person_items(S.Synthetic(bench))[:5]
    m = measure_attention(model, bench, items, batch_size=3)
    assert model.training                        # restored
    assert m.share.shape == (5, 3) and m.iou.shape == (5, 3, 4)
    gt = ground_truth(bench, items)
    # fixed stripes: region k covers rows [40k, 40k + 40) at every level
    parts = gt.parts.clamp(0, 160).numpy()
    inter = np.clip(np.minimum(parts[..., 1], 40 * np.arange(1, 5)) -
                    np.maximum(parts[..., 0], 40 * np.arange(4)), 0, None)
    union = 40 + (parts[..., 1] - parts[..., 0]) - inter
    want = np.where(parts[..., 1] > parts[..., 0], inter / union, np.nan)
    for lvl in range(3):
        np.testing.assert_allclose(m.iou[:, lvl], want, rtol=1e-5)
    np.testing.assert_allclose(m.person_area, gt.mask.mean((1, 2)).numpy(), rtol=1e-5)
    assert ((m.share > 0) & (m.share < 1)).all()
    table = m.table()
    assert len(table) == 12 and table["r_offset"].isna().all()   # stripes do not move
    assert (table["n"] == 5).all()


def test_plot_attention_measures(tmp_path):
    from hacnn.viz import plot_attention_measures

    levels, truth = following_batch()
    m = AttentionMeasures(**{k: v.numpy() for k, v in measure_batch(levels, truth).items()})
    fig = plot_attention_measures({"following": m, "again": m}, path=tmp_path / "m.png")
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "share of attention on person pixels", "IoU with the part's full-width stripe",
        "Pearson r of t_y with the person's offset"]
    assert all(ax.get_xlabel() for ax in fig.axes) and (tmp_path / "m.png").stat().st_size > 0
    heights = [b.get_height() for b in fig.axes[2].patches]
    np.testing.assert_allclose(heights, 1, rtol=1e-6)   # 2 models x 4 regions, r = 1


def test_plot_attention_measures_marks_flat_levels():
    """A level whose maps are all constant has no share of a - min(a) (NaN): the figure says "flat" at
    that bar instead of drawing nothing, and only there."""
    from hacnn.viz import plot_attention_measures

    levels, truth = following_batch()                         # regions only: no soft maps, shares NaN
    m = AttentionMeasures(**{k: v.numpy() for k, v in measure_batch(levels, truth).items()})
    soft = dataclasses.replace(m, share=np.full_like(m.share, 0.4), share_above_min=np.full_like(m.share, 0.3))
    flat = dataclasses.replace(soft, share_above_min=np.full_like(m.share, np.nan))  # every map constant
    fig = plot_attention_measures({"soft": soft, "flat": flat})
    marks = [t for t in fig.axes[0].texts if t.get_text() == "flat"]
    width = 0.8 / 2
    assert [t.get_position()[0] for t in marks] == pytest.approx([width / 2])   # level 1, second model
    assert marks[0].get_color() == "C1"
