"""Plotting helpers (hacnn.viz): layouts, pixel sizes, box placement, ranked lists, curves."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from PIL import Image  # noqa: E402

from hacnn.model import LevelExplanation  # noqa: E402
from hacnn.viz import (IMAGENET_MEAN, IMAGENET_STD, MATCH_COLOUR, MISMATCH_COLOUR, draw_boxes,  # noqa: E402
                       image_to_tensor, overlay_attention, plot_curves, plot_explanation, plot_ranked_list,
                       plot_regions, savefig, to_image, toy_person)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def png_size(path):
    with Image.open(path) as im:
        return im.size                                   # (width, height)


def test_to_image_accepts_every_layout():
    rgb = np.random.default_rng(0).random((20, 8, 3)).astype(np.float32)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    for img in (rgb, chw, chw[None], (rgb * 255).round().astype(np.uint8)):
        out = to_image(img)
        assert out.shape == (20, 8, 3) and out.dtype == np.float32
        np.testing.assert_allclose(out, rgb, atol=1 / 255)
    assert to_image(rgb[..., 0]).shape == (20, 8, 3)                 # grey -> RGB
    with pytest.raises(ValueError):
        to_image(torch.rand(2, 3, 20, 8))                            # a batch is not one image


def test_image_to_tensor_round_trip():
    img = toy_person(32, 16)
    x = image_to_tensor(img)
    assert x.shape == (1, 3, 32, 16)
    np.testing.assert_allclose(to_image(x, IMAGENET_MEAN, IMAGENET_STD), img, atol=1e-5)


def test_toy_person_is_deterministic_and_shift_moves_it():
    a, b = toy_person(seed=3), toy_person(seed=3)
    assert a.shape == (160, 64, 3) and a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    shirt = np.array([0.80, 0.15, 0.15], np.float32)

    def shirt_rows(img):
        return np.nonzero(np.all(np.abs(img - shirt) < 1e-6, axis=-1).any(1))[0]

    moved = toy_person(shift=(0.0, 0.1), seed=3)
    assert shirt_rows(moved).min() - shirt_rows(a).min() == 16     # 10 % of 160 px


def test_savefig_writes_png_of_the_expected_pixel_size(tmp_path):
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    path = savefig(fig, tmp_path / "sub" / "plot.png", dpi=50, tight=False)
    assert path.exists() and png_size(path) == (200, 150)
    w, h = png_size(savefig(fig, tmp_path / "tight.png", dpi=120))
    assert 0 < w <= 4 * 120 + 10 and 0 < h <= 3 * 120 + 10


@pytest.mark.parametrize("as_tensor", [True, False])
def test_boxes_are_drawn_where_the_boxes_say(as_tensor):
    boxes = np.array([[0, 0, 64, 40], [0, 40, 64, 80], [4, 90, 60, 130]], np.float32)
    ax = plot_regions(toy_person(), torch.from_numpy(boxes) if as_tensor else boxes)
    rects = ax.patches
    assert len(rects) == 3
    for r, (x0, y0, x1, y1) in zip(rects, boxes):
        assert r.get_xy() == pytest.approx((x0, y0))
        assert (r.get_width(), r.get_height()) == pytest.approx((x1 - x0, y1 - y0))
    assert ax.images[0].get_extent() == [0, 64, 160, 0]              # continuous pixel coordinates


def test_boxes_land_on_the_right_pixels(tmp_path):
    """One figure pixel per image pixel: the outline of box (8, 40, 56, 80) covers exactly its edges."""
    fig = plt.figure(figsize=(0.64, 1.6), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    plot_regions(np.zeros((160, 64, 3)), [[8, 40, 56, 80]], ax, colours=["#ff0000"], labels=False)
    path = savefig(fig, tmp_path / "box.png", dpi=100, tight=False)
    assert png_size(path) == (64, 160)
    px = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red = (px[..., 0] > 180) & (px[..., 1] < 80) & (px[..., 2] < 80)
    assert red[39:41, 32].all() and red[79:81, 32].all()              # top and bottom edges
    assert red[60, 7:9].all() and red[60, 55:57].all()                # left and right edges
    assert not red[20, 32] and not red[60, 32] and not red[120, 32]  # above, inside, below
    assert not red[60, 2] and not red[60, 61]                         # left and right of the box


def test_draw_boxes_labels_and_colours():
    _, ax = plt.subplots()
    ax.imshow(np.zeros((160, 64)))
    patches = draw_boxes(ax, np.array([[0, 0, 64, 40], [0, 40, 64, 80]]), colours=["red", "blue"])
    assert [p.get_edgecolor() for p in patches] == [to_rgba("red"), to_rgba("blue")]
    assert [t.get_text() for t in ax.texts] == ["r1", "r2"]


def test_overlay_attention_accepts_tensors_and_arrays():
    att = torch.rand(1, 1, 10, 4)
    img = toy_person()
    im_t = overlay_attention(img, att)
    im_n = overlay_attention(img, att.numpy()[0, 0], label="spatial")
    np.testing.assert_allclose(im_t.get_array(), im_n.get_array())
    assert im_t.get_array().shape == (10, 4)
    assert im_t.get_extent() == [0, 64, 160, 0]                      # stretched over the image
    assert im_n.colorbar.ax.get_ylabel() == "spatial"
    with pytest.raises(ValueError):
        overlay_attention(img, torch.rand(2, 10, 4))


def test_plot_explanation_draws_each_level(tmp_path):
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.0, 0, 64, 40], [0, 40, 64, 80], [0, 80, 64, 120], [0, 120, 64, 160]])
    levels = [LevelExplanation(torch.rand(2, h, w, generator=g), torch.rand(2, h, w, generator=g),
                               torch.zeros(2, 4, 2), boxes.expand(2, 4, 4))
              for h, w in ((40, 16), (20, 8), (10, 4))]
    fig = plot_explanation(image_to_tensor(toy_person()).expand(2, -1, -1, -1), levels, index=1,
                           mean=IMAGENET_MEAN, std=IMAGENET_STD, path=tmp_path / "e.png")
    assert (tmp_path / "e.png").exists()
    titles = [a.get_title() for a in fig.axes]
    assert "level 1: soft (40x16)" in titles and "level 3: soft (10x4)" in titles
    assert sum(len(a.patches) for a in fig.axes) == 12                # 4 regions x 3 levels


def test_plot_ranked_list_frames_matches(tmp_path):
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (90, 90, 90)]):
        p = tmp_path / f"{i}.jpg"
        Image.new("RGB", (32, 80), colour).save(p)
        paths.append(p)
    fig = plot_ranked_list(paths[0], paths[1:], np.array([True, False, True]), path=tmp_path / "rank.png")
    assert (tmp_path / "rank.png").exists()
    assert len(fig.axes) == 4
    frame = [to_rgba(ax.spines["top"].get_edgecolor()) for ax in fig.axes]
    assert frame == [to_rgba("black"), to_rgba(MATCH_COLOUR), to_rgba(MISMATCH_COLOUR), to_rgba(MATCH_COLOUR)]
    assert fig.axes[1].images[0].get_array().shape[:2] == (160, 64)  # resized to image_size
    # images instead of paths, top-k cut
    fig = plot_ranked_list(toy_person(), [toy_person(seed=i) for i in range(5)], [True] * 5, topk=2)
    assert len(fig.axes) == 3
    with pytest.raises(ValueError):
        plot_ranked_list(paths[0], paths[1:], [True])


def test_plot_curves_from_csv_and_dataframe(tmp_path):
    log = pd.DataFrame({"epoch": np.arange(1, 11), "loss": np.linspace(6, 1, 10),
                        "rank1": [np.nan] * 4 + [0.2] + [np.nan] * 4 + [0.5], "lr": [3e-4] * 10})
    csv = tmp_path / "log.csv"
    log.to_csv(csv, index=False)
    fig = plot_curves(csv, path=tmp_path / "curves.png")
    assert (tmp_path / "curves.png").exists()
    axes = [a for a in fig.axes if a.axison]
    assert [a.get_ylabel() for a in axes] == ["loss", "rank1", "lr"]
    assert all(a.get_xlabel() == "epoch" for a in axes)
    assert len(axes[0].lines[0].get_xdata()) == 10 and len(axes[1].lines[0].get_xdata()) == 2  # NaNs skipped
    two_runs = pd.concat([log.assign(seed=0), log.assign(seed=1, loss=log.loss + 1)])
    fig = plot_curves(two_runs, y=["loss"], hue="seed")
    assert fig.axes[0].get_legend() is not None
    with pytest.raises(ValueError):
        plot_curves(pd.DataFrame({"epoch": [1, 2]}))
