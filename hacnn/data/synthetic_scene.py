"""Scenes and cameras of the synthetic re-id benchmark, and whole images.

Each camera (:func:`sample_camera`) has a background style with its own
materials (walls above a horizon, textured ground, clutter, passers-by who
occlude), and a sensor: illumination and its gradient, white balance (a colour
cast), gamma, blur, resolution (down- then up-sampling) and noise.
:func:`render_image` draws one crop: scene, passers-by behind, the person and
a shadow, passers-by in front, then the camera; :func:`person_coverage` says
which of its pixels show the person (the ground truth of
:mod:`hacnn.data.synthetic_truth`).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from .synthetic_render import (VIEWS, Canvas, _hex, _pick, capsule, draw_person, ellipse,
                               rect, sample_identity)

BACKGROUNDS = ("street", "park", "hall", "bikes", "plaza", "corridor")
WALLS = ("#9c9890", "#8a4a3a", "#c8b898", "#d8d6cc", "#a8b4bc", "#6e6a64", "#b89070")
GROUNDS = ("#58585a", "#8c8880", "#8a5c4c", "#a89878", "#b8b0a4", "#6c7064")
ACCENTS = ("#283440", "#3c5a3c", "#a03028", "#2c4c8c", "#c8a030", "#606060", "#e0e0e0")


def sample_camera(rng: np.random.Generator, index: int, style: str) -> dict:
    """Scene and sensor settings of camera ``index`` (0-based) with a background style."""
    u = lambda lo, hi: round(float(rng.uniform(lo, hi)), 3)  # noqa: E731
    material = lambda names: [round(c * u(0.9, 1.1), 3) for c in _hex(_pick(rng, names))]  # noqa
    return {
        "index": index, "background": style,
        "gain": u(0.6, 1.1), "cast": [u(0.85, 1.12) for _ in range(3)],
        "gradient": u(-0.35, 0.35), "gamma": u(0.8, 1.25),
        "blur": u(0.0, 0.8), "noise": u(1.5, 9.0), "resolution": u(0.45, 1.0),
        "horizon": u(0.35, 0.7), "clutter": int(rng.integers(1, 5)),
        "occluders": u(0.05, 0.3),
        "wall": material(WALLS), "floor": material(GROUNDS), "accent": material(ACCENTS),
        "texture_seed": int(rng.integers(2**31)),
    }


@lru_cache(maxsize=16)
def _texture(seed: int) -> np.ndarray:
    """A smooth tileable-enough noise texture (96, 192) in [-1, 1] for one camera."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((12, 24)) * 255).astype(np.uint8))
    fine = rng.random((96, 192)) - 0.5
    smooth = np.asarray(small.resize((192, 96), Image.BICUBIC), np.float32) / 127.5 - 1
    return (0.75 * smooth + 0.5 * fine).astype(np.float32)


STEP, X0, Y0, NX, NY = 0.008, -3.8, -0.8, 950, 325  # backdrop raster: x, y in world units
_BACKDROPS: dict[tuple, np.ndarray] = {}


def backdrop(cam: dict) -> np.ndarray:
    """Walls above the camera's horizon, ground below, as a world raster (3, NY, NX).

    Drawn once per camera and process (made before the workers fork, it is shared).
    """
    key = (cam["texture_seed"], cam["background"], cam["horizon"], *cam["wall"], *cam["floor"],
           *cam["accent"])
    if key in _BACKDROPS:
        return _BACKDROPS[key]
    X, Y = X0 + STEP * np.arange(NX)[None, :], Y0 + STEP * np.arange(NY)[:, None]
    tex = _texture(cam["texture_seed"])
    t = tex[(np.floor(Y / 0.012) % 96).astype(int), (np.floor(X / 0.012) % 192).astype(int)]
    t = t[..., None]  # (NY, NX, 1)
    wall, floor, accent = (np.asarray(cam[k], np.float32) for k in ("wall", "floor", "accent"))
    style, hz = cam["background"], cam["horizon"]
    fx, fy = np.abs(np.mod(X, 0.3) - 0.15), np.mod((Y - hz) / np.abs(Y - hz + 0.3), 0.12)
    if style == "park":
        upper = np.where(t > 0.05, [0.18, 0.42, 0.16], [0.3, 0.55, 0.25]) * (1 + 0.3 * t)
        lower = floor * (1 + 0.25 * t)
    elif style == "hall" or style == "corridor":
        panel = (np.abs(np.mod(X, 0.45) - 0.225) > 0.212) | ((Y > hz - 0.04) & (Y < hz))
        door = (style == "corridor") & (np.abs(np.mod(X + 0.3, 1.2) - 0.6) < 0.14) & (Y > hz - 0.5)
        upper = np.where((panel | door)[..., None], wall * 0.65, wall) * (1 + 0.04 * t)
        lower = np.where(((fx < 0.006) | (fy < 0.006))[..., None], floor * 0.8, floor) \
            * (1.05 + 0.2 * (Y - hz))[..., None]
    else:  # street, bikes, plaza: a facade with windows, tiled pavement
        win = (np.abs(np.mod(X, 0.4) - 0.2) < 0.1) & (np.mod(Y + 5, 0.36) < 0.2)
        sky = (style == "plaza") & (Y < hz - 0.45)
        upper = np.where(win[..., None], accent * 0.35 + 0.1, wall) * (1 + 0.08 * t)
        upper = np.where(sky[..., None], np.float32([0.75, 0.82, 0.9]), upper)
        lower = np.where(((fx < 0.008) | (fy < 0.008))[..., None], floor * 0.75, floor) \
            * (1 + 0.12 * t)
    image = np.where((Y < hz)[..., None], upper, lower).astype(np.float32)  # (NY, NX, 3)
    _BACKDROPS[key] = np.ascontiguousarray(image.transpose(2, 0, 1))       # (3, NY, NX)
    return _BACKDROPS[key]


def draw_scene(cv: Canvas, cam: dict, rng: np.random.Generator, offset: float) -> None:
    """The camera's backdrop panned by ``offset``, then a few objects of clutter."""
    ix = np.clip(((cv.xs + offset - X0) / STEP).astype(int), 0, NX - 1)
    iy = np.clip(((cv.ys - Y0) / STEP).astype(int), 0, NY - 1)
    cv.img[:] = backdrop(cam)[:, iy[:, None], ix[None, :]]
    accent = np.asarray(cam["accent"], np.float32)
    for _ in range(cam["clutter"] + (3 if cam["background"] == "bikes" else 0)):
        _clutter(cv, cam, rng, cam["background"], accent)


def _clutter(cv: Canvas, cam: dict, rng: np.random.Generator, style: str, accent) -> None:
    """One background object standing on the ground: a post, bin, bench, planter or bicycle."""
    x, base = float(rng.uniform(-0.6, 0.6)), float(rng.uniform(cam["horizon"] + 0.05, 0.95))
    col = np.clip(0.5 * accent + 0.5 * np.float32([0.45, 0.45, 0.45]) * rng.uniform(0.6, 1.3), 0, 1)
    k = 0.6 + 0.4 * base  # farther objects (higher on the ground) look smaller
    kind = "bike" if style == "bikes" and rng.random() < 0.7 else \
        _pick(rng, ("post", "bin", "bench", "planter"))
    if kind == "post":
        cv.paint(rect(x - 0.01, -1, x + 0.01, base), (0.22, 0.22, 0.24))
        cv.paint(rect(x - 0.05 * k, base - 0.9, x + 0.05 * k, base - 0.8), col)  # a sign
    elif kind == "bin":
        cv.paint(rect(x - 0.06 * k, base - 0.2 * k, x + 0.06 * k, base), col)
        cv.paint(rect(x - 0.065 * k, base - 0.22 * k, x + 0.065 * k, base - 0.19 * k), col, 0.6)
    elif kind == "bench":
        for lx in (x - 0.2 * k, x + 0.2 * k):
            cv.paint(rect(lx - 0.01, base - 0.12 * k, lx + 0.01, base), (0.2, 0.2, 0.2))
        cv.paint(rect(x - 0.25 * k, base - 0.14 * k, x + 0.25 * k, base - 0.11 * k), col * 0.7)
        cv.paint(rect(x - 0.25 * k, base - 0.3 * k, x + 0.25 * k, base - 0.26 * k), col * 0.7)
    elif kind == "planter":
        cv.paint(rect(x - 0.08 * k, base - 0.12 * k, x + 0.08 * k, base), col * 0.8)
        cv.paint(ellipse(x, base - 0.2 * k, 0.11 * k, 0.1 * k), (0.2, 0.4, 0.18))
    else:
        r = 0.12 * k
        for wx in (x - 1.3 * r, x + 1.3 * r):
            bbox, d = ellipse(wx, base - r, r, r)
            cv.paint((bbox, lambda X, Y, d=d: np.abs(d(X, Y)) - 0.006), (0.1, 0.1, 0.1))
        cv.paint(capsule(x - 1.3 * r, base - r, x + 0.3 * r, base - 2.2 * r, 0.008), accent)
        cv.paint(capsule(x + 1.3 * r, base - r, x + 0.3 * r, base - 2.2 * r, 0.008), accent)


def apply_camera(img: np.ndarray, cam: dict, rng: np.random.Generator) -> np.ndarray:
    """Illumination, colour cast, blur, gamma, resolution and noise: float (3, H, W) in
    [0, 1] -> uint8 (H, W, 3)."""
    h, w = img.shape[1:]
    light = (cam["gain"] * rng.uniform(0.88, 1.12) * 255) \
        * np.asarray(cam["cast"], np.float32)[:, None, None] \
        * (1 + cam["gradient"] * np.linspace(-0.5, 0.5, h, dtype=np.float32))[:, None]
    img = img * light  # (3, H, W) * (3, H, 1)
    a = np.float32(min(cam["blur"] ** 2 / 2, 0.32))  # 3-tap kernel (a, 1 - 2a, a), var = sigma^2
    if a > 0.005:
        img[:, 1:-1] += a * (img[:, :-2] + img[:, 2:] - 2 * img[:, 1:-1])
        img[:, :, 1:-1] += a * (img[:, :, :-2] + img[:, :, 2:] - 2 * img[:, :, 1:-1])
    img = _gamma_lut(cam["gamma"])[np.clip(img + 0.5, 0, 255).astype(np.uint8)]
    im = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)))
    res = min(1.0, cam["resolution"] * rng.uniform(0.85, 1.2))
    if res < 0.97:
        im = im.resize((max(8, round(w * res)), max(16, round(h * res))), Image.BILINEAR)
        im = im.resize((w, h), Image.BILINEAR)
    start = int(rng.integers(len(_NOISE) - h * w * 3))
    noise = _NOISE[start:start + h * w * 3].reshape(h, w, 3) * np.float32(cam["noise"])
    return np.clip(np.asarray(im, np.float32) + noise + 0.5, 0, 255).astype(np.uint8)


_NOISE = np.random.default_rng(20180618).standard_normal(1 << 20, dtype=np.float32)


@lru_cache(maxsize=64)
def _gamma_lut(gamma: float) -> np.ndarray:
    return np.round(255 * (np.arange(256) / 255) ** gamma).astype(np.uint8)


def render_image(spec: dict, identity: dict | None, cam: dict, *, height: int = 128,
                 width: int = 64, plain: bool = False) -> np.ndarray:
    """One crop (uint8, (H, W, 3)) from an image record of the benchmark's plan.

    ``spec`` holds ``box`` (crop box in world units), ``view``, ``phase`` and
    ``seed`` (the per-image seed sequence); ``identity`` is None for a crop
    without a person. ``plain=True`` is the debug mode: a flat magenta
    background, no clutter, passers-by, shadow or camera effects.
    """
    rng = np.random.default_rng(spec["seed"])
    cv = Canvas.for_box(spec["box"], height, width)
    passers = [] if plain else _scene_and_passers(cv, cam, identity, rng)
    _draw_passers(cv, passers, front=False)
    if identity is not None:
        if not plain:
            cv.paint(ellipse(0.02, 0.995, 0.17 * identity["build"], 0.028), None, 0.6)
        draw_person(cv, identity, spec["view"], spec["phase"])
    _draw_passers(cv, passers, front=True)
    if plain:
        return np.ascontiguousarray((np.clip(cv.img, 0, 1) * 255 + 0.5).astype(np.uint8)
                                    .transpose(1, 2, 0))
    return apply_camera(cv.img, cam, rng)


def _scene_and_passers(cv: Canvas, cam: dict, identity: dict | None,
                       rng: np.random.Generator) -> list[tuple]:
    """Draw the scene on ``cv``, then sample the passers-by (at most one):
    ``(front, attributes, view, phase, dx, scale)`` tuples."""
    draw_scene(cv, cam, rng, float(rng.uniform(-3, 3)))
    if rng.random() >= cam["occluders"] + (0.3 if identity is None else 0.0):
        return []
    front = bool(rng.random() < 0.5)
    return [(front, sample_identity(rng), _pick(rng, VIEWS), float(rng.uniform(0, 2 * np.pi)),
             float(rng.choice([-1, 1]) * rng.uniform(0.28, 0.45)),
             float(rng.uniform(1.0, 1.15) if front else rng.uniform(0.8, 0.95)))]


def _draw_passers(cv: Canvas, passers: list[tuple], front: bool) -> None:
    """The passers-by behind the person (``front=False``) or in front of them."""
    for in_front, at, view, phase, dx, scale in passers:
        if in_front == front:
            draw_person(cv.moved(dx, dy=0.25 * (scale - 1), scale=scale), at, view, phase)


def person_coverage(spec: dict, identity: dict | None, cam: dict, *, height: int = 128,
                    width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Where the person of :func:`render_image`'s crop lies: ``(person, visible)``,
    two float32 (H, W) maps in [0, 1] of the pixels' coverage (anti-aliased edges
    partly covered): the whole person, and the part not hidden by a passer-by in
    front. Zero for a crop without a person.

    Replays the crop's random draws (scene on a 1x1 canvas, then the passers-by)
    and draws the person on black and on white: per pixel the two differ by the
    transmittance of everything drawn, so coverage = 1 - (white - black), exactly.
    """
    rng = np.random.default_rng(spec["seed"])
    passers = _scene_and_passers(Canvas.for_box(spec["box"], 1, 1), cam, identity, rng)

    def coverage(draw) -> np.ndarray:
        black, white = (Canvas.for_box(spec["box"], height, width, fill=(v, v, v)) for v in (0, 1))
        draw(black)
        draw(white)
        return np.clip(1 - (white.img - black.img).mean(0), 0, 1)   # (H, W)

    if identity is None:
        empty = np.zeros((height, width), np.float32)
        return empty, empty
    person = coverage(lambda cv: draw_person(cv, identity, spec["view"], spec["phase"]))
    if not any(front for front, *_ in passers):
        return person, person
    return person, person * (1 - coverage(lambda cv: _draw_passers(cv, passers, front=True)))

