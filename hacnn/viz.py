"""Plotting helpers for the notebooks: attention overlays, region boxes,
ranked lists, training curves and the attention measures.

Every function accepts torch tensors or numpy arrays, draws on an ``ax`` it is
given (or makes its own figure) and, given ``path``, saves a PNG with
:func:`savefig` (dpi 120, tight bounding box). Images are drawn with
``extent=(0, W, H, 0)``, so a pixel i covers [i, i+1) and the boxes of
:meth:`hacnn.HardRegionalAttention.boxes` (continuous pixel coordinates)
land exactly on the image. Notebooks 01-05 and 07 use these helpers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REGION_COLOURS = ("tab:red", "tab:orange", "tab:green", "tab:cyan", "tab:purple", "tab:pink")
MATCH_COLOUR, MISMATCH_COLOUR = "tab:green", "tab:red"


def as_numpy(x) -> np.ndarray:
    """A tensor (any device, with or without grad) or array-like as a numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def to_image(img, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """Any image layout -> (H, W, 3) float array in [0, 1] for ``imshow``.

    Accepts (H, W), (H, W, 3), (3, H, W) or (1, 3, H, W), float or uint8.
    ``mean``/``std`` undo a normalisation (e.g. :data:`IMAGENET_MEAN`).
    """
    a = as_numpy(img)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of shape {a.shape}")
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)                          # (C, H, W) -> (H, W, C)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"cannot read an image of shape {as_numpy(img).shape}")
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if mean is not None or std is not None:
        a = a * np.asarray(std if std is not None else (1, 1, 1), np.float32) \
            + np.asarray(mean if mean is not None else (0, 0, 0), np.float32)
    return np.clip(a, 0.0, 1.0)


def image_to_tensor(img, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(H, W, 3) image in [0, 1] -> (1, 3, H, W) normalised float tensor (the model's input)."""
    a = to_image(img)
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    return ((t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)).unsqueeze(0)


def toy_person(height: int = 160, width: int = 64, shirt=(0.80, 0.15, 0.15), trousers=(0.15, 0.20, 0.50),
               skin=(0.87, 0.70, 0.55), hair=(0.20, 0.12, 0.05), shoes=(0.10, 0.10, 0.10),
               bag: bool = False, shift: tuple[float, float] = (0.0, 0.0), seed: int = 0) -> np.ndarray:
    """A person-like test picture: (H, W, 3) float32 in [0, 1], no data set needed.

    Head, torso with arms, legs and shoes on a textured background; ``bag``
    adds a side bag, ``shift`` = (dx, dy) moves the person by a fraction of the
    image size (a misaligned detection). Deterministic given ``seed``.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width]).reshape(2, 1, 1)
    y = y - shift[1]
    x = x - shift[0]
    img = np.empty((height, width, 3), np.float32)
    img[:] = 0.55 + 0.25 * np.stack([y, y, 0.6 * y], -1) * np.array([1.0, 0.9, 0.8])   # ground/wall
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)

    def paint(mask, colour):
        img[mask] = np.asarray(colour, np.float32)

    cx = 0.5
    paint(((x - cx) / 0.16) ** 2 + ((y - 0.10) / 0.065) ** 2 < 1, skin)              # face
    paint((((x - cx) / 0.17) ** 2 + ((y - 0.075) / 0.05) ** 2 < 1) & (y < 0.085), hair)
    paint((abs(x - cx) < 0.06) & (y > 0.16) & (y < 0.19), skin)                      # neck
    paint((abs(x - cx) < 0.27) & (y > 0.19) & (y < 0.50), shirt)                     # torso
    paint((abs(x - cx) > 0.27) & (abs(x - cx) < 0.37) & (y > 0.20) & (y < 0.46), shirt)   # sleeves
    paint((abs(x - cx) > 0.28) & (abs(x - cx) < 0.36) & (y >= 0.46) & (y < 0.53), skin)  # hands
    paint((abs(x - cx) < 0.24) & (y >= 0.50) & (y < 0.58), trousers)                 # hips
    paint((abs(x - cx) > 0.03) & (abs(x - cx) < 0.24) & (y >= 0.58) & (y < 0.92), trousers)  # legs
    paint((abs(x - cx) > 0.02) & (abs(x - cx) < 0.27) & (y >= 0.92) & (y < 0.97), shoes)
    if bag:
        paint((x > cx + 0.27) & (x < cx + 0.47) & (y > 0.40) & (y < 0.56), (0.35, 0.22, 0.10))
    return np.clip(img, 0.0, 1.0)


def show_image(img, ax=None, title: str | None = None, mean=None, std=None):
    """Draw an image in continuous pixel coordinates; returns the Axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(2, 4.5))
    a = to_image(img, mean, std)
    h, w = a.shape[:2]
    ax.imshow(a, extent=(0, w, h, 0), interpolation="nearest")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([0, w])
    ax.set_yticks([0, h // 4, h // 2, 3 * h // 4, h])
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    if title:
        ax.set_title(title)
    return ax


def overlay_attention(image, attention, ax=None, alpha: float = 0.5, cmap: str = "jet",
                      title: str | None = None, colorbar: bool = True, vmin=None, vmax=None,
                      mean=None, std=None, interpolation: str = "nearest", label: str = "attention"):
    """An (h, w) attention map stretched over an image; returns the heat-map AxesImage.

    ``image`` None draws the map alone. The map keeps its own resolution
    (``interpolation="nearest"`` shows its true cells; "bilinear" smooths).
    ``label`` names the colour bar.
    """
    att = as_numpy(attention).squeeze()
    if att.ndim != 2:
        raise ValueError(f"attention must be one (h, w) map, got shape {as_numpy(attention).shape}")
    if image is not None:
        ax = show_image(image, ax, title, mean, std)
        h, w = ax.get_ylim()[0], ax.get_xlim()[1]
    else:
        if ax is None:
            _, ax = plt.subplots(figsize=(2, 4.5))
        h, w = att.shape
        ax.set_xlabel("x (cells)")
        ax.set_ylabel("y (cells)")
        if title:
            ax.set_title(title)
        alpha = 1.0
    im = ax.imshow(att, extent=(0, w, h, 0), cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax,
                   interpolation=interpolation)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.08, pad=0.04, label=label)
    return im


def draw_boxes(ax, boxes, colours: Sequence[str] | None = None, labels: Sequence[str] | bool = True,
               linewidth: float = 2.0) -> list[Rectangle]:
    """Draw (T, 4) boxes (x0, y0, x1, y1 in pixels) on ``ax``; returns the rectangles."""
    b = as_numpy(boxes).reshape(-1, 4)
    colours = colours or REGION_COLOURS
    if labels is True:
        labels = [f"r{t + 1}" for t in range(len(b))]
    patches = []
    for t, (x0, y0, x1, y1) in enumerate(b):
        c = colours[t % len(colours)]
        r = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=c, linewidth=linewidth)
        ax.add_patch(r)
        patches.append(r)
        if labels:
            ax.text(x0 + 1.5, y0 + 1.5, labels[t], color="white", fontsize=7, va="top", ha="left",
                    bbox=dict(facecolor=c, edgecolor="none", pad=1.0, alpha=0.85))
    return patches


def plot_regions(image, boxes, ax=None, title: str | None = None, path=None, mean=None, std=None, **kw):
    """An image with its hard-attention regions; returns the Axes (saves if ``path``)."""
    ax = show_image(image, ax, title, mean, std)
    draw_boxes(ax, boxes, **kw)
    if path is not None:
        savefig(ax.figure, path)
    return ax


def plot_explanation(image, levels, index: int = 0, path=None, mean=None, std=None,
                     field: str = "soft", title: str | None = None):
    """Per-level attention of ``HACNN.explain``: one column per level, boxes on top row.

    ``image``: one image or the batch that was explained (``index`` picks one);
    ``levels``: the list of ``LevelExplanation``; ``field``: "soft" or "spatial".
    Returns the Figure.
    """
    img = as_numpy(image)
    if img.ndim == 4:
        img = img[index]
    n = len(levels)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n + 0.4, 8.4), squeeze=False)
    for lvl, e in enumerate(levels):
        plot_regions(img, e.boxes[index], axes[0, lvl], f"level {lvl + 1}: regions", mean=mean, std=std)
        m = getattr(e, field)
        if m is None:
            axes[1, lvl].set_axis_off()
            axes[1, lvl].set_title(f"level {lvl + 1}: no {field} map")
            continue
        h, w = m.shape[-2:]
        overlay_attention(img, m[index], axes[1, lvl], title=f"level {lvl + 1}: {field} ({h}x{w})",
                          mean=mean, std=std)
    for ax in axes[:, 1:].flat:
        ax.set_ylabel("")
    return _finish(fig, title, path)


def _load(img_or_path, size: tuple[int, int]) -> np.ndarray:
    if isinstance(img_or_path, (str, Path)):
        from PIL import Image

        with Image.open(img_or_path) as im:
            im = im.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(im, dtype=np.float32) / 255.0
    return to_image(img_or_path)


def plot_ranked_list(query_path, gallery_paths, matches, topk: int = 10, path=None,
                     query_title: str = "query", gallery_titles: Sequence[str] | None = None,
                     image_size: tuple[int, int] = (160, 64), border: float = 4.0):
    """A query and its top-k gallery images, framed green (same id) or red (another id).

    ``query_path``/``gallery_paths`` are file paths or images (arrays/tensors),
    ``gallery_paths`` already sorted by distance; ``matches`` a boolean per
    gallery item, or None where identities are unknown (black frames). Returns the Figure.
    """
    gallery_paths = list(gallery_paths)[:topk]
    if matches is None:
        matches = [None] * len(gallery_paths)
    else:
        matches = [bool(m) for m in as_numpy(matches).reshape(-1)[: len(gallery_paths)]]
    if len(matches) != len(gallery_paths):
        raise ValueError(f"need one match flag per gallery image ({len(gallery_paths)}), got {len(matches)}")
    n = len(gallery_paths) + 1
    fig, axes = plt.subplots(1, n, figsize=(1.15 * n, 3.2), squeeze=False)
    axes = axes[0]
    items = [(query_path, None, query_title)] + [
        (g, m, gallery_titles[i] if gallery_titles else f"rank {i + 1}")
        for i, (g, m) in enumerate(zip(gallery_paths, matches))
    ]
    for ax, (item, match, label) in zip(axes, items):
        a = _load(item, image_size)
        ax.imshow(a, extent=(0, a.shape[1], a.shape[0], 0))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=8)
        colour = "black" if match is None else (MATCH_COLOUR if match else MISMATCH_COLOUR)
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(border)
    axes[0].set_xlabel("query", fontsize=8)
    axes[1].set_xlabel("gallery, nearest first", fontsize=8, loc="left")
    fig.tight_layout()
    if path is not None:
        savefig(fig, path)
    return fig


def plot_curves(log, x: str = "epoch", y: Sequence[str] | None = None, hue: str | None = None,
                path=None, ncols: int = 3, title: str | None = None):
    """Training curves with seaborn: one panel per metric (loss, rank-1, mAP, ...).

    ``log`` is a CSV path or a DataFrame with one row per step/epoch; ``y``
    defaults to every numeric column except ``x`` and ``hue``; rows where a
    metric is missing (e.g. evaluated every 10 epochs) are skipped per panel.
    ``hue`` compares runs (e.g. a "seed" or "run" column). Returns the Figure.
    """
    import pandas as pd
    import seaborn as sns

    df = pd.read_csv(log) if isinstance(log, (str, Path)) else pd.DataFrame(log).copy()
    if x not in df.columns:
        df = df.reset_index(names=x)
    if y is None:
        y = [c for c in df.select_dtypes("number").columns if c not in (x, hue)]
    y = [y] if isinstance(y, str) else list(y)
    if not y:
        raise ValueError("no metric column to plot")
    ncols = min(ncols, len(y))
    nrows = -(-len(y) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False)
    for ax, col in zip(axes.flat, y):
        d = df.dropna(subset=[col])
        sns.lineplot(data=d, x=x, y=col, hue=hue, ax=ax, marker="o" if len(d) <= 30 else None,
                     legend=bool(hue) and ax is axes.flat[0])
        ax.set_xlabel(x)
        ax.set_ylabel(col)
        ax.set_title(col)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(y):]:
        ax.set_axis_off()
    return _finish(fig, title, path)


def plot_attention_measures(measures, path=None, title: str | None = None):
    """:class:`hacnn.diagnostics.AttentionMeasures` as three panels, one bar per model
    (``measures``: one, or ``{label: measures}``): per level the soft attention's
    share on the person (bars: of ``a - min(a)``; crosses: of ``a``; dashed: the
    uniform baseline; "flat" where every map of the level is constant, so that
    ``a - min(a)`` has no share); per level and region the IoU with its part's stripe; and the
    Pearson r of t_y with the person's offset (95 % intervals). Returns the Figure.
    """
    from .diagnostics import AttentionMeasures

    if isinstance(measures, AttentionMeasures):
        measures = {"model": measures}
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1, 2, 2]})
    width = 0.8 / len(measures)
    for k, (label, m) in enumerate(measures.items()):
        soft, regions = m.soft_table(), m.region_table()
        colour = f"C{k}"
        x = np.arange(len(soft)) + (k - (len(measures) - 1) / 2) * width
        above = soft["share_above_min"].to_numpy()
        axes[0].bar(x, above, width, color=colour, label=label)
        for xi in x[np.isnan(above)]:                 # a flat map: a - min(a) is 0, its share undefined
            axes[0].text(xi, 0.02, "flat", rotation=90, ha="center", va="bottom", fontsize=7, color=colour)
        axes[0].scatter(x, soft["share"], marker="x", color="black", zorder=3,
                        label="share of a itself (bars: of a - min a)" if k == 0 else None)
        xr = np.arange(len(regions)) + (k - (len(measures) - 1) / 2) * width
        axes[1].bar(xr, regions["iou"], width, color=colour, label=label)
        r = regions["r_offset"].to_numpy()
        err = np.abs(np.stack([r - regions["r_offset_low"], regions["r_offset_high"] - r]))
        fixed = " (no r: regions fixed)" if np.isnan(r).all() else ""
        axes[2].bar(xr, np.nan_to_num(r), width, color=colour, label=label + fixed)
        axes[2].errorbar(xr, r, yerr=err, fmt="none", ecolor="black", capsize=2)
    baseline = soft["person_area"].iloc[0]
    axes[0].axhline(baseline, color="black", linestyle="--", linewidth=1,
                    label=f"uniform ({baseline:.2f})")
    axes[0].set_xticks(range(len(soft)), [f"level {lvl}" for lvl in soft.index])
    axes[0].set(ylim=(0, 1), xlabel="level", ylabel="share of attention on person pixels",
                title="soft attention on the person")
    names = [f"L{lvl} {part}" for (lvl, _), part in zip(regions.index, regions["part"])]
    for ax, ylabel, head in ((axes[1], "IoU with the part's full-width stripe", "regions on parts"),
                             (axes[2], "Pearson r of t_y with the person's offset",
                              "regions following the person")):
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set(xlabel="level and region (top to bottom: part)", ylabel=ylabel, title=head)
    axes[1].set_ylim(0, 1)
    axes[2].set_ylim(-1, 1)
    axes[2].axhline(0, color="black", linewidth=0.8)
    axes[0].legend(fontsize=7, loc="upper left")
    axes[1].legend(fontsize=7, loc="upper right")
    axes[2].legend(fontsize=7, loc="lower left")
    return _finish(fig, title, path)


def _finish(fig, title: str | None, path):
    """Title, tight layout, and a PNG when ``path`` is given."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        savefig(fig, path)
    return fig


def savefig(fig, path, dpi: int = 120, tight: bool = True) -> Path:
    """Save a figure as PNG (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight" if tight else None)
    return path
