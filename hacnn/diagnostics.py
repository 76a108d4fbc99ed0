"""Attention that is measured, not only drawn: HA-CNN's attention against the
synthetic benchmark's ground truth (:mod:`hacnn.data.synthetic_truth`).

Per level of :meth:`hacnn.HACNN.explain`, over a set of test images:

* **Soft attention on the person.** The level's soft map (mean over
  channels) is stretched to input pixels as the figures show it (each cell
  over its pixels, nearest), and we take the share of its mass on person
  pixels (weighted by their coverage): ``share = sum(a m) / sum(a)``. A flat
  map gets the person's area share ``person_area = mean(m)``, the uniform
  baseline. torchreid's head (``attention_relu=True``) puts ``a`` in
  [0.5, 1), so ``share`` can only move a little from the baseline
  (at most to ``2 person_area / (1 + person_area)``); ``share_above_min``
  takes the share of ``a - min(a)`` (per image), the part of the map that
  varies, which reaches 1 when the map is raised exactly on the person
  (a flat map has no such part: NaN, left out of the mean).
* **Hard regions on body parts.** The T regions (boxes in input pixels),
  sorted top to bottom by their centres, against the parts of the same rank
  (head, torso, legs, feet). HA-CNN's regions have a fixed full width
  (``s_w = 1``), so each part is a *full-width* stripe between its vertical
  extents; both are clipped to the image (the crop sees nothing beyond it).
  ``iou`` and ``part_covered`` (the share of the part inside the region);
  a part cut off by the crop is left out (NaN). The head is ~0.6 of a
  region's height and the feet ~0.2, so even a perfect placement has IoU < 1.
* **Regions following the person.** Pearson r (with n and a 95 % Fisher
  interval) between each region's learned ``t_y`` and the person's vertical
  offset in the crop (:attr:`GroundTruth.offset`), and between the region's
  centre and its part's centre. The scales are fixed in HA-CNN (only the
  translations are learned), so there is no scale to correlate. Regions that
  do not move (an untrained model, fixed stripes) give NaN: r is undefined.

:func:`measure_attention` runs a model over a benchmark and returns
:class:`AttentionMeasures` (per-image values; ``.table()`` for notebooks).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .data.synthetic_render import PARTS

NAN = float("nan")


def soft_mass(attention: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(share, share_above_min, person_area)``, each (B,), of level maps (B, h, w)
    over person masks (B, H, W) in [0, 1] (the map stretched to (H, W), nearest)."""
    a = F.interpolate(attention[:, None].float(), size=mask.shape[-2:], mode="nearest")[:, 0]
    m = mask.to(a)
    share = (a * m).sum((1, 2)) / a.sum((1, 2))                     # (B,)
    d = a - a.amin((1, 2), keepdim=True)                            # (B, H, W) >= 0
    total = d.sum((1, 2))
    above = torch.where(total > 0, (d * m).sum((1, 2)) / total.clamp_min(1e-30),
                        torch.full_like(total, NAN))
    return share, above, m.mean((1, 2))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and the share of ``b`` inside ``a`` of (..., 4) boxes x0, y0, x1, y1
    (broadcast); NaN where ``b`` is empty."""
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    area = lambda z: (z[..., 2] - z[..., 0]).clamp_min(0) * (z[..., 3] - z[..., 1]).clamp_min(0)  # noqa
    inter, area_b = w * h, area(b)
    empty = area_b <= 0
    iou = inter / (area(a) + area_b - inter).clamp_min(1e-12)
    return iou.masked_fill(empty, NAN), (inter / area_b.clamp_min(1e-12)).masked_fill(empty, NAN)


def sort_regions(boxes: torch.Tensor) -> torch.Tensor:
    """(B, T) indices that order each image's regions top to bottom (by their centres)."""
    return (boxes[..., 1] + boxes[..., 3]).argsort(dim=-1, stable=True)


def part_stripes(parts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, P, 2) vertical extents -> (B, P, 4) full-width stripes clipped to the image."""
    H, W = size
    y = parts.clamp(0, H)
    zeros = torch.zeros_like(y[..., 0])
    return torch.stack([zeros, y[..., 0], zeros + W, y[..., 1]], dim=-1)


def region_iou(boxes: torch.Tensor, parts: torch.Tensor, size: tuple[int, int]):
    """``(iou, part_covered)``, each (B, T), of regions (B, T, 4) sorted top to bottom
    against the parts (B, T, 2) of the same rank, both clipped to the image ``size``."""
    if boxes.shape[1] != parts.shape[1]:
        raise ValueError(f"one region per part needed: {boxes.shape[1]} regions, "
                         f"{parts.shape[1]} parts ({', '.join(PARTS)})")
    H, W = size
    order = sort_regions(boxes)
    lo, hi = boxes.new_tensor([0, 0, 0, 0]), boxes.new_tensor([W, H, W, H])
    sorted_boxes = torch.minimum(torch.maximum(boxes.gather(1, order[..., None].expand(-1, -1, 4)),
                                               lo), hi)
    return box_iou(sorted_boxes, part_stripes(parts.to(boxes), size))


def pearson(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson r and n over dim 0 of paired samples (N, ...), pairs with a NaN left
    out; r is NaN where n < 3 or either side is constant."""
    x, y = torch.broadcast_tensors(x.double(), y.double())
    ok = ~(x.isnan() | y.isnan())
    n = ok.sum(0)
    x, y = x.where(ok, 0), y.where(ok, 0)
    mx, my = x.sum(0) / n.clamp_min(1), y.sum(0) / n.clamp_min(1)
    dx, dy = (x - mx).where(ok, 0), (y - my).where(ok, 0)
    sxx, syy, sxy = (dx * dx).sum(0), (dy * dy).sum(0), (dx * dy).sum(0)
    flat = lambda s, m: s <= n * (1e-9 * m.abs()) ** 2  # noqa: E731 (constant up to rounding)
    valid = (n >= 3) & ~flat(sxx, mx) & ~flat(syy, my)
    r = (sxy / torch.sqrt(sxx * syy).clamp_min(1e-300)).clamp(-1, 1)
    return r.where(valid, torch.full_like(r, NAN)), n


def fisher_interval(r: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % interval of a Pearson r from n pairs (Fisher's z transform)."""
    if not n > 3 or math.isnan(r):
        return NAN, NAN
    centre, half = math.atanh(min(max(r, -0.999999), 0.999999)), z / math.sqrt(n - 3)
    return math.tanh(centre - half), math.tanh(centre + half)


@dataclass
class AttentionMeasures:
    """Per-image measures of N images, L levels, T regions (= the P parts).

    Regions are in their top-to-bottom order per image (region k against part k).
    """

    share: np.ndarray            # (N, L) share of the soft map's mass on the person
    share_above_min: np.ndarray  # (N, L) the same for a - min(a) (NaN: flat map)
    person_area: np.ndarray      # (N,) the person's area share: the uniform baseline
    iou: np.ndarray              # (N, L, T) region k vs part k (NaN: part cut off)
    part_covered: np.ndarray     # (N, L, T) share of part k inside region k
    ty: np.ndarray               # (N, L, T) learned t_y of region k
    centre: np.ndarray           # (N, L, T) centre y of region k, input pixels
    part_centre: np.ndarray      # (N, T) centre y of part k (NaN: wholly outside the crop)
    offset: np.ndarray           # (N,) vertical offset of the person in the crop, pixels
    parts: tuple[str, ...] = PARTS

    @property
    def num_levels(self) -> int:
        return self.share.shape[1]

    def correlations(self) -> tuple[np.ndarray, ...]:
        """``(r_offset, n_offset, r_part, n_part)``, each (L, T): r of t_y with the
        person's offset, r of the region's centre with its part's centre (over the
        images where the part is visible), and their numbers of pairs."""
        ty, centre = torch.from_numpy(self.ty), torch.from_numpy(self.centre)
        r_offset, n_offset = pearson(ty, torch.from_numpy(self.offset)[:, None, None])
        r_part, n_part = pearson(centre, torch.from_numpy(self.part_centre)[:, None])
        return r_offset.numpy(), n_offset.numpy(), r_part.numpy(), n_part.numpy()

    def soft_table(self):
        """One row per level: mean share, share of a - min(a), uniform baseline, n."""
        import pandas as pd

        return pd.DataFrame({
            "level": np.arange(1, self.num_levels + 1),
            "share": _nanmean(self.share, 0),
            "share_above_min": _nanmean(self.share_above_min, 0),
            "person_area": np.full(self.num_levels, _nanmean(self.person_area, 0)),
            "n": (~np.isnan(self.share)).sum(0),
        }).set_index("level")

    def region_table(self):
        """One row per (level, region top to bottom): part, mean IoU and part covered
        over the ``n_part`` images that show the part, r of t_y with the person's
        offset (95 % interval) over ``n`` images, r of the centre with the part's."""
        import pandas as pd

        r_offset, n_offset, r_part, n_part = self.correlations()
        rows = []
        for lvl in range(self.num_levels):
            for k, part in enumerate(self.parts):
                n = int(n_offset[lvl, k])
                low, high = fisher_interval(float(r_offset[lvl, k]), n)
                rows.append({"level": lvl + 1, "region": f"r{k + 1}", "part": part,
                             "iou": _nanmean(self.iou[:, lvl, k], 0),
                             "part_covered": _nanmean(self.part_covered[:, lvl, k], 0),
                             "n_part": int(n_part[lvl, k]),
                             "r_offset": float(r_offset[lvl, k]), "r_offset_low": low,
                             "r_offset_high": high, "r_part": float(r_part[lvl, k]), "n": n})
        return pd.DataFrame(rows).set_index(["level", "region"])

    def table(self):
        """:meth:`region_table` joined with :meth:`soft_table` (the soft columns repeat
        on the T rows of their level; its ``n`` becomes ``n_soft``)."""
        soft = self.soft_table().rename(columns={"n": "n_soft"})
        return self.region_table().join(soft, on="level")


def _nanmean(a: np.ndarray, axis: int):
    """Mean without NaNs (NaN, quietly, where nothing is left)."""
    a = np.asarray(a, np.float64)
    n = (~np.isnan(a)).sum(axis)
    total = np.where(np.isnan(a), 0, a).sum(axis)
    out = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return float(out) if out.ndim == 0 else out


@torch.no_grad()
def measure_batch(levels, truth) -> dict[str, torch.Tensor]:
    """Per-image measures of one batch: ``levels`` from ``model.explain(images)``,
    ``truth`` the :class:`~hacnn.data.synthetic_truth.GroundTruth` of the same images
    (on the same device). Values are (B, L) / (B, L, T) / (B,) tensors."""
    share, above, iou, covered, ty, centre = [], [], [], [], [], []
    area = truth.mask.float().mean((1, 2))
    for e in levels:
        s, s_above, _ = soft_mass(e.soft, truth.mask) if e.soft is not None else \
            (torch.full_like(area, NAN),) * 3
        share.append(s)
        above.append(s_above)
        i, c = region_iou(e.boxes.float(), truth.parts, truth.size)
        order = sort_regions(e.boxes)
        iou.append(i)
        covered.append(c)
        ty.append(e.theta[..., 1].float().gather(1, order))
        centre.append(((e.boxes[..., 1] + e.boxes[..., 3]) / 2).float().gather(1, order))
    visible = truth.parts.clamp(0, truth.size[0])
    part_centre = truth.parts.mean(-1).masked_fill(visible[..., 1] <= visible[..., 0], NAN)
    return {"share": torch.stack(share, 1), "share_above_min": torch.stack(above, 1),
            "person_area": area, "iou": torch.stack(iou, 1), "part_covered": torch.stack(covered, 1),
            "ty": torch.stack(ty, 1), "centre": torch.stack(centre, 1),
            "part_centre": part_centre, "offset": truth.offset}


def measure_attention(model, source, items=None, *, batch_size: int = 64, device=None,
                      workers: int = 0) -> AttentionMeasures:
    """Run ``model`` (eval mode, restored after) over images of the synthetic
    benchmark ``source`` (a :class:`~hacnn.data.Synthetic` or its folder) and
    measure its attention. ``items``: ``(path, pid, camid)`` of that benchmark
    (default: its query and gallery images of test identities,
    :func:`~hacnn.data.synthetic_truth.person_items`)."""
    from torch.utils.data import DataLoader

    from .data.loading import ImageDataset
    from .data.synthetic import Synthetic
    from .data.synthetic_truth import ground_truth, person_items
    from .data.transforms import build_transforms

    data = source if isinstance(source, Synthetic) else Synthetic(source)
    items = person_items(data) if items is None else list(items)
    if not items:
        raise ValueError("no images to measure (expected (path, pid, camid) items of the benchmark)")
    size = tuple(model.config.input_size)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    loader = DataLoader(ImageDataset(items, build_transforms(*size, train=False)),
                        batch_size=batch_size, shuffle=False, num_workers=workers)
    was_training, parts = model.training, {}
    model.eval()
    try:
        for images, _, _, paths in loader:
            truth = ground_truth(data, paths, size).to(device)
            batch = measure_batch(model.explain(images.to(device)), truth)
            for k, v in batch.items():
                parts.setdefault(k, []).append(v.float().cpu())
    finally:
        model.train(was_training)
    return AttentionMeasures(**{k: torch.cat(v).numpy() for k, v in parts.items()})


def summarize_measures(results: dict[str, AttentionMeasures]):
    """Per model (``{label: measures}``) and level: the soft shares against the uniform
    baseline, and the mean over the regions of IoU, part covered and r of t_y with the
    person's offset."""
    import pandas as pd

    rows = []
    for label, m in results.items():
        soft, regions = m.soft_table(), m.region_table()
        for level, s in soft.iterrows():
            r = regions.loc[level]
            rows.append({"model": label, "level": level, "share": s["share"],
                         "share_above_min": s["share_above_min"], "person_area": s["person_area"],
                         "iou": r["iou"].mean(), "part_covered": r["part_covered"].mean(),
                         "r_offset": r["r_offset"].mean(), "n": int(s["n"])})
    return pd.DataFrame(rows).set_index(["model", "level"])


__all__ = ["AttentionMeasures", "measure_attention", "summarize_measures", "measure_batch", "soft_mass", "box_iou",
           "region_iou", "part_stripes", "sort_regions", "pearson", "fisher_interval"]
