"""What the synthetic benchmark holds, before any drawing: the plan.

:class:`SyntheticConfig` holds every parameter; :func:`make_plan` turns it
into identities (attribute sets from small palettes, with "twins" that differ
in one local attribute), cameras, and one record per image: folder, Market-1501
file name, pid, camera, view, walking phase, crop box and per-image seed.
Every random draw comes from a generator seeded by ``(seed, stream, pid,
...)``, so the plan (and every image) is the same whatever the number of
workers, and changing ``misalignment`` changes the crop boxes only.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

import numpy as np

from . import synthetic_render as R
from . import synthetic_scene as C

# Market-1501's gallery: 15,913 boxes that are people (13,120) or distractors
# (2,793, id 0000), plus 3,819 junk boxes (id -1). Same ratios here.
DISTRACTOR_FRACTION = 2793 / 15913  # of the non-junk gallery
JUNK_RATIO = 3819 / 15913           # junk boxes per non-junk gallery box
SIZES = {
    "tiny": dict(num_train_ids=24, num_test_ids=16, images_per_id=8),
    "small": dict(num_train_ids=100, num_test_ids=50, images_per_id=10),
    "default": dict(num_train_ids=200, num_test_ids=100, images_per_id=30),
    "large": dict(num_train_ids=751, num_test_ids=750, images_per_id=20),
}
LOCAL_ATTRIBUTES = ("shoes", "bag", "hat")  # what a twin changes


@dataclass(frozen=True)
class SyntheticConfig:
    """Every parameter of one benchmark; all of it goes into ``synthetic.json``.

    ``images_per_id`` is a mean (each identity gets 75-125 % of it, over 2 to
    ``num_cameras`` cameras, at least 2 images per camera). ``twin_fraction``
    of the identities copy an earlier identity of their split and change one
    local attribute (shoes, bag or hat).
    """

    size: str = "default"
    num_train_ids: int = 200
    num_test_ids: int = 100
    num_cameras: int = 6
    images_per_id: int = 30
    misalignment: float = 0.25
    seed: int = 0
    twin_fraction: float = 0.3
    height: int = 128
    width: int = 64
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        # plain JSON-able values; misalignment rounded so that its folder name is exact
        for f in fields(self):
            value = round(float(getattr(self, f.name)), 4) if f.type == "float" else \
                int(getattr(self, f.name)) if f.type == "int" else getattr(self, f.name)
            object.__setattr__(self, f.name, value)
        if not 0.0 <= self.misalignment <= 1.0:
            raise ValueError(f"misalignment must lie in [0, 1], got {self.misalignment}")
        if not 2 <= self.num_cameras <= 9:
            raise ValueError(
                f"num_cameras must be 2..9 (one digit in c<N>), got {self.num_cameras}")
        if min(self.num_train_ids, self.num_test_ids) < 2 or \
                self.num_train_ids + self.num_test_ids > 9999:
            raise ValueError("need >= 2 train and test ids and at most 9,999 ids in all (4 digits)")
        if not 4 <= self.images_per_id <= 1000:  # frame numbers keep 6 digits
            raise ValueError(f"images_per_id must be 4..1000, got {self.images_per_id}")

    @classmethod
    def for_size(cls, size: str = "default", **overrides) -> "SyntheticConfig":
        """The preset ``size`` with the given overrides (``None`` values ignored)."""
        if size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
        kw = {**SIZES[size], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(size=size, **kw)

    @property
    def name(self) -> str:
        """Folder name: ``<size>-m<misalignment>-s<seed>`` (+ a hash if not a preset)."""
        base = f"{self.size}-m{self.misalignment:g}-s{self.seed}"
        if self == SyntheticConfig.for_size(self.size, misalignment=self.misalignment,
                                            seed=self.seed):
            return base
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"{base}-{digest[:8]}"


# --- the plan: identities, cameras and one record per image ---------------------

def crop_box(z: np.ndarray, m: float) -> tuple[float, float, float, float]:
    """A detector-like crop box (world units) from 8 fixed draws ``z`` at misalignment ``m``.

    At ``m = 0`` the box is the labelled one (person plus a 4 % margin, 2:1,
    a small scale jitter); as ``m`` grows it shifts, rescales, changes aspect
    and, for a growing share of images, cuts off the feet or the head. The
    draws do not depend on ``m``, so the same seed gives the same images up
    to the crop.
    """
    zn = np.clip(z[:4], -2.5, 2.5)
    hb = 1.08 * np.exp(0.03 * np.clip(z[7], -2.5, 2.5))
    w, h = hb / 2 * np.exp(m * 0.2 * zn[2] + m * 0.12 * zn[3]), hb * np.exp(m * 0.2 * zn[2])
    cx, cy = m * 0.25 * (hb / 2) * zn[0], 0.5 + m * 0.1 * hb * zn[1]
    y0, y1 = cy - h / 2, cy + h / 2
    if z[4] < 0.3 * m:  # truncated detection
        cut = (0.1 + 0.25 * z[6]) * h
        y0, y1 = (y0, y1 - cut) if z[5] < 0.7 else (y0 + cut, y1)
    return (float(cx - w / 2), float(y0), float(cx + w / 2), float(y1))


def _draws(rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([rng.standard_normal(4), rng.random(3), rng.standard_normal(1)])


def person_box(box, build: float, cfg: SyntheticConfig) -> list[float]:
    """Where the person (shoulders, head top, soles) lies in the crop, in pixels."""
    x0, y0, x1, y1 = box
    hw = 0.13 * build
    px = lambda x: round((x - x0) / (x1 - x0) * cfg.width, 1)  # noqa: E731
    py = lambda y: round((y - y0) / (y1 - y0) * cfg.height, 1)  # noqa: E731
    return [px(-hw), py(0.0), px(hw), py(1.0)]


def _twin(rng: np.random.Generator, at: dict) -> tuple[dict, str]:
    """A copy of ``at`` that differs in exactly one local attribute."""
    at, what = dict(at), R._pick(rng, LOCAL_ATTRIBUTES)
    if what == "shoes":
        at["shoes"] = R._pick(rng, [c for c in R.PALETTES["shoes"] if c != at["shoes"]])
    elif what == "bag":
        at["bag"] = R._pick(rng, [b for b in R.BAGS if b != at["bag"]])
        at["bag_color"] = "none" if at["bag"] == "none" else \
            (at["bag_color"] if at["bag_color"] != "none" else R._pick(rng, R.PALETTES["bag"]))
    else:
        at["hat"] = "none" if at["hat"] != "none" else R._pick(rng, R.HATS[1:])
        at["hat_color"] = "none" if at["hat"] == "none" else R._pick(rng, R.PALETTES["hat"])
    return at, what


def make_identities(cfg: SyntheticConfig) -> dict[int, dict]:
    """``{pid: {"split", "attributes", "twin_of", "differs_in"}}``, all attribute sets distinct."""
    rng = np.random.default_rng([cfg.seed, 0])
    perm = rng.permutation(cfg.num_train_ids + cfg.num_test_ids) + 1
    splits = {"train": sorted(perm[:cfg.num_train_ids].tolist()),
              "test": sorted(perm[cfg.num_train_ids:].tolist())}
    rng, seen, out = np.random.default_rng([cfg.seed, 1]), set(), {}
    for split, pids in splits.items():
        done: list[int] = []
        for pid in pids:
            while True:
                twin_of, what = None, None
                if done and rng.random() < cfg.twin_fraction:
                    twin_of = done[int(rng.integers(len(done)))]
                    at, what = _twin(rng, out[twin_of]["attributes"])
                else:
                    at = R.sample_identity(rng)
                key = tuple(v for k, v in sorted(at.items()) if k not in ("build", "legs"))
                if key not in seen:
                    break
            seen.add(key)
            out[pid] = {"split": split, "attributes": at, "twin_of": twin_of, "differs_in": what}
            done.append(pid)
    return out


def make_cameras(cfg: SyntheticConfig) -> list[dict]:
    styles = np.random.default_rng([cfg.seed, 2]).permutation(len(C.BACKGROUNDS))
    return [C.sample_camera(np.random.default_rng([cfg.seed, 2, c]), c,
                            C.BACKGROUNDS[styles[c % len(styles)]]) for c in range(cfg.num_cameras)]


def _record(cfg, folder, pid, cam, seq, frame, nn, seed, at, view, phase, box) -> dict:
    pid_text = "-1" if pid == -1 else f"{pid:04d}"
    return {"folder": folder, "name": f"{pid_text}_c{cam + 1}s{seq}_{frame:06d}_{nn:02d}.jpg",
            "pid": pid, "camid": cam, "view": view, "phase": round(float(phase), 3),
            "box": [round(v, 4) for v in box], "seed": seed, "identity": at,
            "person_box": person_box(box, at["build"], cfg) if at else None}


def _identity_records(cfg: SyntheticConfig, pid: int, info: dict) -> list[dict]:
    """The tracklets of one identity: 2..C cameras, one walk (view, phase) per camera."""
    rng, at = np.random.default_rng([cfg.seed, 3, pid]), info["attributes"]
    n = max(4, round(cfg.images_per_id * rng.uniform(0.75, 1.25)))
    cams = rng.choice(cfg.num_cameras, int(rng.integers(2, min(cfg.num_cameras, n // 2) + 1)),
                      replace=False)
    counts = 2 + rng.multinomial(n - 2 * len(cams), rng.dirichlet(np.ones(len(cams))))
    records, k = [], 0
    for cam, count in sorted(zip(cams.tolist(), counts.tolist())):
        base, seq = R._pick(rng, R.VIEWS), int(rng.integers(1, 7))
        frame, phase = int(rng.integers(1000, 800000)), rng.uniform(0, 2 * np.pi)
        query = int(rng.integers(count)) if info["split"] == "test" else -1
        for i in range(count):
            view = base if rng.random() < 0.75 else R._pick(rng, R.VIEWS)
            frame += int(rng.integers(5, 40))
            folder = "bounding_box_train" if query < 0 else "query" if i == query \
                else "bounding_box_test"
            nn = 0 if folder == "query" else int(rng.integers(1, 5))
            box = crop_box(_draws(rng), cfg.misalignment)
            records.append(_record(cfg, folder, pid, cam, seq, frame, nn, [cfg.seed, 5, pid, k],
                                   at, view, phase + 0.8 * i, box))
            k += 1
    return records


def _extra_records(cfg: SyntheticConfig, n_gallery: int, identities: dict) -> list[dict]:
    """Distractors (0000: scenery or a stranger badly cropped) and junk (-1: test
    identities cropped to a fragment), in Market-1501's proportions."""
    nonjunk = round(n_gallery / (1 - DISTRACTOR_FRACTION))
    n_distractors, n_junk = nonjunk - n_gallery, round(JUNK_RATIO * nonjunk)
    test_ids = sorted(p for p, v in identities.items() if v["split"] == "test")
    records = []
    for k in range(n_distractors + n_junk):
        rng = np.random.default_rng([cfg.seed, 4, k])
        junk = k >= n_distractors
        cam, seq = int(rng.integers(cfg.num_cameras)), int(rng.integers(1, 7))
        frame, nn = 50 * k + int(rng.integers(50)), int(rng.integers(1, 9))  # unique names
        if junk:
            at = identities[test_ids[int(rng.integers(len(test_ids)))]]["attributes"]
        else:
            at = R.sample_identity(rng) if rng.random() < 0.5 else None
        h = rng.uniform(0.25, 0.55) if junk else rng.uniform(0.4, 1.0)
        cx = rng.choice([-1, 1]) * rng.uniform(0.04, 0.16) if junk else rng.uniform(-0.4, 0.4)
        cy = rng.uniform(0.1, 0.9)
        box = (cx - h / 4, cy - h / 2, cx + h / 4, cy + h / 2)
        records.append(_record(cfg, "bounding_box_test", -1 if junk else 0, cam, seq, frame, nn,
                               [cfg.seed, 5, 10000 + int(junk), k], at, R._pick(rng, R.VIEWS),
                               rng.uniform(0, 2 * np.pi), box))
    return records


def make_plan(cfg: SyntheticConfig) -> tuple[dict, list[dict], list[dict]]:
    """Identities, cameras and the record of every image, before any drawing."""
    identities, cameras = make_identities(cfg), make_cameras(cfg)
    records = [r for pid in sorted(identities)
               for r in _identity_records(cfg, pid, identities[pid])]
    n_gallery = sum(r["folder"] == "bounding_box_test" for r in records)
    records += _extra_records(cfg, n_gallery, identities)
    if len({(r["folder"], r["name"]) for r in records}) != len(records):
        raise ValueError("too many images for Market-1501's 6-digit frame numbers")
    return identities, cameras, records
