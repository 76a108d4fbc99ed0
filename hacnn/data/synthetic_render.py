"""Drawing for the synthetic re-id benchmark: people, scenes and cameras.

Everything is drawn with vectorised numpy straight onto the output pixel grid
(128x64), with anti-aliased edges from signed distances (a pixel's coverage is
``clip(0.5 - d / pixel, 0, 1)``). Each shape is evaluated only on the pixels
of its bounding box.

World units: a person is 1 tall, the top of the head at ``y = 0``, the soles
at ``y = 1``, the body centre at ``x = 0`` (the crop box of an image is a
rectangle in these units; see ``synthetic.crop_box``). Identities are dicts of
palette names (:func:`sample_identity`), cameras are dicts of scene and sensor
settings (:func:`sample_camera`); both go into the benchmark's manifest.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

RGB = tuple[float, float, float]


def _hex(h: str) -> RGB:
    return tuple(int(h[i:i + 2], 16) / 255 for i in (1, 3, 5))


def _palette(**colours: str) -> dict[str, RGB]:
    return {name: _hex(h) for name, h in colours.items()}


# Small palettes on purpose: many identities share a shirt or trousers.
PALETTES: dict[str, dict[str, RGB]] = {
    "skin": _palette(light="#f2cdb0", fair="#e0ac88", medium="#c08a64", tan="#8d5f3f",
                     dark="#5c3d28"),
    "hair": _palette(black="#1c1814", brown="#4a3020", auburn="#7a3b1c", blonde="#c8a060",
                     grey="#9a9690"),
    "upper": _palette(red="#b8262b", navy="#1f2d5c", white="#e8e8e4", black="#242424",
                      grey="#85878a", green="#2f6e3a", yellow="#e0b82e", purple="#6e3a8c"),
    "lower": _palette(denim="#34507a", black="#202020", grey="#6c6c70", khaki="#b09a6c",
                      white="#dcdcd6", brown="#5a3e2a"),
    "shoes": _palette(black="#141414", white="#f0f0f0", red="#c02020", blue="#2050c0",
                      brown="#6a4020"),
    "bag": _palette(black="#181818", red="#a82020", blue="#24489c", tan="#a07840",
                    pink="#d880a8"),
    "hat": _palette(white="#eeeeee", red="#c02828", black="#1a1a1a", blue="#2858b0"),
}
PATTERNS = ("solid", "stripes", "checks", "logo")
LOWER_KINDS = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "sidebag")
HATS = ("none", "cap", "beanie")
VIEWS = ("front", "back", "left", "right")
BACKGROUNDS = ("street", "park", "hall", "bikes", "plaza", "corridor")
PLAIN = (1.0, 0.0, 1.0)  # debug background: magenta, in no palette


def _pick(rng: np.random.Generator, options, p=None) -> str:
    options = list(options)
    return options[int(rng.choice(len(options), p=p))]


def sample_identity(rng: np.random.Generator) -> dict:
    """Attributes of one identity, as palette names (plus two body scalars)."""
    upper, pattern = _pick(rng, PALETTES["upper"]), _pick(rng, PATTERNS, [0.45, 0.2, 0.15, 0.2])
    second = _pick(rng, [c for c in ("white", "black", "red", "navy", "yellow") if c != upper])
    bag = _pick(rng, BAGS, [0.45, 0.3, 0.25])
    hat = _pick(rng, HATS, [0.7, 0.2, 0.1])
    return {
        "skin": _pick(rng, PALETTES["skin"]), "hair": _pick(rng, PALETTES["hair"]),
        "hair_style": _pick(rng, ("short", "long", "buzz"), [0.5, 0.35, 0.15]),
        "upper": upper, "pattern": pattern, "upper2": second,
        "sleeves": _pick(rng, ("long", "short")),
        "lower": _pick(rng, PALETTES["lower"]),
        "lower_kind": _pick(rng, LOWER_KINDS, [0.6, 0.2, 0.2]),
        "shoes": _pick(rng, PALETTES["shoes"]),
        "bag": bag, "bag_color": _pick(rng, PALETTES["bag"]) if bag != "none" else "none",
        "hat": hat, "hat_color": _pick(rng, PALETTES["hat"]) if hat != "none" else "none",
        "build": round(float(rng.uniform(0.85, 1.2)), 3),
        "legs": round(float(rng.uniform(0.5, 0.56)), 3),
    }


# Scene materials (walls, ground, accents for windows and clutter).
WALLS = ("#9c9890", "#8a4a3a", "#c8b898", "#d8d6cc", "#a8b4bc", "#6e6a64", "#b89070")
GROUNDS = ("#58585a", "#8c8880", "#8a5c4c", "#a89878", "#b8b0a4", "#6c7064")
ACCENTS = ("#283440", "#3c5a3c", "#a03028", "#2c4c8c", "#c8a030", "#606060", "#e0e0e0")


def sample_camera(rng: np.random.Generator, index: int, style: str) -> dict:
    """Scene and sensor settings of camera ``index`` (0-based) with a background style."""
    u = lambda lo, hi: round(float(rng.uniform(lo, hi)), 3)  # noqa: E731
    material = lambda names: [round(c * u(0.9, 1.1), 3) for c in _hex(_pick(rng, names))]  # noqa
    return {
        "index": index, "background": style,
        "gain": u(0.65, 1.25), "cast": [u(0.85, 1.15) for _ in range(3)],
        "gradient": u(-0.35, 0.35), "gamma": u(0.8, 1.25),
        "blur": u(0.0, 1.1), "noise": u(1.5, 9.0), "resolution": u(0.45, 1.0),
        "horizon": u(0.35, 0.7), "clutter": int(rng.integers(1, 5)),
        "occluders": u(0.05, 0.3),
        "wall": material(WALLS), "floor": material(GROUNDS), "accent": material(ACCENTS),
        "texture_seed": int(rng.integers(2**31)),
    }


# --- shapes: (bbox, signed distance) pairs in world units ---------------------

def ellipse(cx, cy, rx, ry, clip_y=None):
    """An ellipse; ``clip_y`` keeps only the part above that line."""
    def sdf(X, Y):
        d = (np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2) - 1) * min(rx, ry)
        return d if clip_y is None else np.maximum(d, Y - clip_y)
    return (cx - rx, cy - ry, cx + rx, cy + ry), sdf


def rect(x0, y0, x1, y1):
    return (x0, y0, x1, y1), lambda X, Y: np.maximum(np.maximum(x0 - X, X - x1),
                                                     np.maximum(y0 - Y, Y - y1))


def trapezoid(cx, y0, y1, hw0, hw1):
    """A vertical trapezoid: half-width ``hw0`` at ``y0`` to ``hw1`` at ``y1``."""
    def sdf(X, Y):
        hw = hw0 + (hw1 - hw0) * np.clip((Y - y0) / (y1 - y0), 0, 1)
        return np.maximum(np.abs(X - cx) - hw, np.maximum(y0 - Y, Y - y1))
    hw = max(hw0, hw1)
    return (cx - hw, y0, cx + hw, y1), sdf


def capsule(ax, ay, bx, by, r0, r1=None):
    """A limb: the segment a-b thickened to radius ``r0`` (at a) .. ``r1`` (at b)."""
    r1 = r0 if r1 is None else r1
    dx, dy = bx - ax, by - ay
    n = dx * dx + dy * dy + 1e-12

    def sdf(X, Y):
        t = np.clip(((X - ax) * dx + (Y - ay) * dy) / n, 0, 1)
        return np.hypot(X - ax - t * dx, Y - ay - t * dy) - (r0 + (r1 - r0) * t)
    r = max(r0, r1)
    return (min(ax, bx) - r, min(ay, by) - r, max(ax, bx) + r, max(ay, by) + r), sdf


def _span(v: np.ndarray, lo: float, hi: float) -> slice | None:
    """Indices of the evenly spaced (maybe decreasing) ``v`` that fall in [lo, hi]."""
    start, step = float(v[0]), float(v[1] - v[0])
    a, b = (lo - start) / step, (hi - start) / step
    a, b = max(0, int(np.ceil(min(a, b)))), min(len(v) - 1, int(np.floor(max(a, b))))
    return slice(a, b + 1) if a <= b else None


class Canvas:
    """A float RGB image (H, W, 3) with the world coordinates of its pixel centres."""

    def __init__(self, img: np.ndarray, xs: np.ndarray, ys: np.ndarray, px: float):
        self.img, self.xs, self.ys, self.px = img, xs, ys, px

    @classmethod
    def for_box(cls, box, height: int, width: int, fill=PLAIN) -> "Canvas":
        x0, y0, x1, y1 = box
        xs = x0 + (np.arange(width) + 0.5) * (x1 - x0) / width    # (W,)
        ys = y0 + (np.arange(height) + 0.5) * (y1 - y0) / height  # (H,)
        img = np.empty((height, width, 3), np.float32)
        img[:] = fill
        return cls(img, xs, ys, float(np.sqrt((x1 - x0) / width * (y1 - y0) / height)))

    def moved(self, dx=0.0, dy=0.0, scale=1.0, mirror=False) -> "Canvas":
        """The same pixels seen from a person at ``x=dx``, feet at ``1+dy``, ``scale`` tall."""
        xs = (self.xs - dx) / scale
        return Canvas(self.img, -xs if mirror else xs, (self.ys - 1 - dy) / scale + 1,
                      self.px / scale)

    def _window(self, bbox):
        """Pixel slices (and coordinates) covering a world bounding box, or None."""
        x0, y0, x1, y1 = bbox
        cs, rs = _span(self.xs, x0 - self.px, x1 + self.px), _span(self.ys, y0 - self.px, y1 + self.px)
        if cs is None or rs is None:
            return None
        return rs, cs, self.xs[cs][None, :], self.ys[rs][:, None]

    def paint(self, shape, color, shade: float = 1.0) -> None:
        """Cover ``shape`` with ``color`` times ``shade``.

        ``color``: RGB, a function of (X, Y) -> (h, w, 3), or None for the
        pixels already there (``shade < 1`` then casts a shadow).
        """
        win = self._window(shape[0])
        if win is None:
            return
        rs, cs, X, Y = win
        alpha = np.clip(0.5 - shape[1](X, Y) / self.px, 0, 1)[..., None]  # (h, w, 1)
        region = self.img[rs, cs]
        col = region if color is None else color(X, Y) if callable(color) else \
            np.asarray(color, np.float32)
        region += alpha * (col * shade - region)


# --- people -------------------------------------------------------------------

def _upper_fill(at: dict):
    """Upper-body colour as a function of (X, Y): solid, stripes or checks."""
    c1 = np.asarray(PALETTES["upper"][at["upper"]], np.float32)
    c2 = np.asarray(PALETTES["upper"].get(at["upper2"], PALETTES["lower"].get(at["upper2"], c1)),
                    np.float32)
    if at["pattern"] == "stripes":
        return lambda X, Y: np.where((np.floor(Y / 0.045) % 2 == 0)[..., None], c1, c2)
    if at["pattern"] == "checks":
        return lambda X, Y: np.where(((np.floor(X / 0.04) + np.floor(Y / 0.04)) % 2 == 0)[..., None],
                                     c1, c2)
    return tuple(c1)


def draw_person(cv: Canvas, at: dict, view: str, phase: float) -> None:
    """Draw identity ``at`` facing ``view`` at walking ``phase`` (radians)."""
    side = view in ("left", "right")
    if view == "left":
        cv = cv.moved(mirror=True)
    pal = {k: PALETTES[k] for k in PALETTES}
    skin, hair = pal["skin"][at["skin"]], pal["hair"][at["hair"]]
    lower, shoes = pal["lower"][at["lower"]], pal["shoes"][at["shoes"]]
    upper = _upper_fill(at)
    bag = pal["bag"].get(at["bag_color"], (0, 0, 0))
    b, s = at["build"], np.sin(phase)
    sw, ww = (0.07 * b, 0.055 * b) if side else (0.105 * b, 0.085 * b)  # shoulder, waist
    y_sh, y_waist, y_crotch = 0.165, 0.47, at["legs"]
    y_knee, y_ankle = (y_crotch + 0.955) / 2, 0.955
    kind = at["lower_kind"]

    # legs: (hip x, knee x, ankle x, ankle lift, shade); far leg first
    if side:
        legs = [(0.0, -0.06 * s + 0.02, -0.13 * s, 0.03 * max(0.0, s), 0.72),
                (0.0, 0.06 * s + 0.02, 0.13 * s, 0.03 * max(0.0, -s), 1.0)]
    else:
        sgn = 1 if view == "front" else -1
        legs = [(h * 0.045 * b, h * 0.048 * b, h * 0.05 * b,
                 0.025 * max(0.0, h * s * sgn), 1.0) for h in (-1, 1)]
    for hx, kx, ax, lift, shade in legs:
        ky, ay = y_knee - lift / 2, y_ankle - lift
        thigh = lower if kind != "skirt" else skin
        shin = lower if kind == "trousers" else skin
        r = 0.042 * b if kind != "skirt" else 0.03
        cv.paint(capsule(hx, y_crotch - 0.02, kx, ky, r, r * 0.85), thigh, shade)
        cv.paint(capsule(kx, ky, ax, ay, r * (0.85 if kind == "trousers" else 0.65),
                         r * (0.75 if kind == "trousers" else 0.55)), shin, shade)
        fx = ax + 0.025 if side else ax
        cv.paint(ellipse(fx, ay + 0.02, 0.05 if side else 0.032, 0.024), shoes, shade)

    # far arm and backpack behind the body (side view)
    swing = 0.1 * s
    if side:
        _arm(cv, at, 0.0, y_sh + 0.02, swing, upper, skin, 0.7)
    if kind == "skirt":
        cv.paint(trapezoid(0, y_waist, y_knee - 0.03, ww, ww + (0.05 if side else 0.06)), lower)
    else:
        cv.paint(rect(-ww - 0.004, y_waist, ww + 0.004, y_crotch + 0.01), lower)

    # torso, rounded shoulders
    cv.paint(trapezoid(0, y_sh + 0.01, y_waist + 0.03, sw, ww), upper)
    cv.paint(capsule(-sw + 0.03, y_sh + 0.03, sw - 0.03, y_sh + 0.03, 0.03), upper)
    cv.paint(rect(-0.018, 0.12, 0.018, y_sh + 0.01), skin)  # neck
    if view == "front" and at["pattern"] == "logo":
        cc = pal["upper"].get(at["upper2"], (1, 1, 1))
        cv.paint(ellipse(0.025 * b, 0.26, 0.03, 0.03), cc)
        cv.paint(rect(0.01 * b, 0.245, 0.04 * b, 0.275), pal["upper"][at["upper"]])

    if at["bag"] == "backpack":
        if view == "back":
            cv.paint(rect(-0.085 * b, y_sh + 0.03, 0.085 * b, 0.43), bag)
            cv.paint(rect(-0.06 * b, 0.33, 0.06 * b, 0.41), bag, 0.7)  # pocket
        elif side:
            cv.paint(rect(-sw - 0.07, y_sh + 0.03, -sw + 0.01, 0.43), bag)
        else:  # straps from the front
            for h in (-1, 1):
                cv.paint(capsule(h * 0.06 * b, y_sh + 0.02, h * 0.07 * b, 0.34, 0.012), bag, 0.8)
    if at["bag"] == "sidebag":
        h = 1 if view != "back" else -1
        if side:
            cv.paint(capsule(-0.03, y_sh + 0.02, 0.03, 0.43, 0.01), bag, 0.8)
            cv.paint(rect(-0.05, 0.42, 0.05, 0.54), bag)
        else:
            cv.paint(capsule(-h * 0.07 * b, y_sh + 0.02, h * (ww + 0.03), 0.43, 0.011), bag, 0.8)
            cv.paint(rect(h * (ww - 0.01), 0.42, h * (ww + 0.085), 0.54), bag)

    # arms in front (both for front/back, the near one for side views)
    if side:
        _arm(cv, at, 0.0, y_sh + 0.02, -swing, upper, skin, 1.0)
    else:
        lift = 0.02 * abs(s)
        for h in (-1, 1):
            _arm(cv, at, h * (sw - 0.015), y_sh + 0.02, h * 0.018, upper, skin, 1.0, lift)
    _head(cv, at, view, skin, hair)


def _arm(cv, at, sx, sy, swing, upper, skin, shade, lift=0.0):
    """Upper arm and forearm from the shoulder (sx, sy); ``swing`` moves the hand in x."""
    ex, ey = sx + swing * 0.5, sy + 0.15
    wx, wy = sx + swing, sy + 0.29 - lift
    cv.paint(capsule(sx, sy, ex, ey, 0.03, 0.026), upper, shade)
    cv.paint(capsule(ex, ey, wx, wy, 0.025, 0.021), upper if at["sleeves"] == "long" else skin,
             shade)
    cv.paint(ellipse(wx, wy + 0.02, 0.02, 0.024), skin, shade)


def _head(cv, at, view, skin, hair):
    side = view in ("left", "right")
    cx = 0.006 if side else 0.0
    hs, hat = at["hair_style"], at["hat"]
    if hs == "long" and view != "front":  # long hair falls behind the head
        cv.paint(capsule(-0.03 if side else 0, 0.08, -0.035 if side else 0, 0.22,
                         0.035 if side else 0.05), hair)
    cv.paint(ellipse(cx, 0.072, 0.044, 0.063), skin)
    if side:
        cv.paint(ellipse(cx + 0.04, 0.08, 0.01, 0.012), skin)  # nose
    top = {"short": 0.045, "long": 0.05, "buzz": 0.03}[hs]
    if view == "back":
        top = 0.115
    cap = ellipse(cx - (0.006 if side else 0), 0.066, 0.049, 0.069, clip_y=top)
    cv.paint(cap, hair)
    if side:  # hair on the back half of the head
        cv.paint(ellipse(cx - 0.012, 0.07, 0.036, 0.056, clip_y=0.11 if hs != "buzz" else 0.08),
                 hair)
    if hs == "long" and view == "front":
        for h in (-1, 1):
            cv.paint(capsule(h * 0.04, 0.05, h * 0.045, 0.19, 0.014), hair)
    if hat != "none":
        colour = PALETTES["hat"][at["hat_color"]]
        low = 0.045 if hat == "cap" else 0.06
        cv.paint(ellipse(cx, 0.05, 0.048, 0.052, clip_y=low), colour)
        if hat == "cap":
            brim = rect(cx, low - 0.012, cx + 0.085, low) if side else \
                rect(cx - 0.048, low - 0.006, cx + 0.048, low + 0.008)
            cv.paint(brim, colour, 0.8)


# --- scenes and cameras -------------------------------------------------------

@lru_cache(maxsize=16)
def _texture(seed: int) -> np.ndarray:
    """A smooth tileable-enough noise texture (96, 192) in [-1, 1] for one camera."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((12, 24)) * 255).astype(np.uint8))
    fine = rng.random((96, 192)) - 0.5
    smooth = np.asarray(small.resize((192, 96), Image.BICUBIC), np.float32) / 127.5 - 1
    return (0.75 * smooth + 0.5 * fine).astype(np.float32)


def draw_scene(cv: Canvas, cam: dict, rng: np.random.Generator, offset: float) -> None:
    """Walls above the camera's horizon, ground below, then clutter; ``offset`` pans."""
    X, Y = cv.xs[None, :] + offset, cv.ys[:, None]  # (1, W), (H, 1)
    tex = _texture(cam["texture_seed"])
    t = tex[(np.floor(Y / 0.012) % 96).astype(int), (np.floor(X / 0.012) % 192).astype(int)]
    t = t[..., None]  # (H, W, 1)
    wall, floor, accent = (np.asarray(cam[k], np.float32) for k in ("wall", "floor", "accent"))
    style, hz = cam["background"], cam["horizon"]
    fx, fy = np.abs(np.mod(X, 0.3) - 0.15), np.mod((Y - hz) / (Y - hz + 0.3), 0.12)
    if style == "park":
        upper = np.where(t > 0.05, [0.18, 0.42, 0.16], [0.3, 0.55, 0.25]) * (1 + 0.3 * t)
        lower = floor * (1 + 0.25 * t)
    elif style == "hall" or style == "corridor":
        panel = (np.abs(np.mod(X, 0.45) - 0.225) > 0.215) | ((Y > hz - 0.04) & (Y < hz))
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
    cv.img[:] = np.where((Y < hz)[..., None], upper, lower)
    for _ in range(cam["clutter"] + (3 if style == "bikes" else 0)):
        _clutter(cv, cam, rng, style, accent)


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
    """Illumination, colour cast, gamma, resolution, blur and noise -> uint8 (H, W, 3)."""
    h, w = img.shape[:2]
    light = cam["gain"] * rng.uniform(0.88, 1.12) \
        * (1 + cam["gradient"] * np.linspace(-0.5, 0.5, h, dtype=np.float32))[:, None, None]
    img = np.clip(img * light * np.asarray(cam["cast"], np.float32) * 255 + 0.5, 0, 255)
    im = Image.fromarray(_gamma_lut(cam["gamma"])[img.astype(np.uint8)])
    res = min(1.0, cam["resolution"] * rng.uniform(0.85, 1.2))
    if res < 0.97:
        im = im.resize((max(8, round(w * res)), max(16, round(h * res))), Image.BILINEAR)
        im = im.resize((w, h), Image.BILINEAR)
    if cam["blur"] > 0.05:
        im = im.filter(ImageFilter.GaussianBlur(cam["blur"]))
    noise = rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(cam["noise"])
    return np.clip(np.asarray(im, np.float32) + noise + 0.5, 0, 255).astype(np.uint8)


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
    passers = []
    if not plain:
        draw_scene(cv, cam, rng, float(rng.uniform(-3, 3)))
        if rng.random() < cam["occluders"] + (0.3 if identity is None else 0.0):
            front = bool(rng.random() < 0.5)
            passers.append((front, sample_identity(rng), _pick(rng, VIEWS),
                            float(rng.uniform(0, 2 * np.pi)),
                            float(rng.choice([-1, 1]) * rng.uniform(0.28, 0.45)),
                            float(rng.uniform(1.0, 1.15) if front else rng.uniform(0.8, 0.95))))
    for front, at, view, phase, dx, scale in passers:
        if not front:
            draw_person(cv.moved(dx, dy=0.25 * (scale - 1), scale=scale), at, view, phase)
    if identity is not None:
        if not plain:
            cv.paint(ellipse(0.02, 0.995, 0.17 * identity["build"], 0.028), None, 0.6)
        draw_person(cv, identity, spec["view"], spec["phase"])
    for front, at, view, phase, dx, scale in passers:
        if front:
            draw_person(cv.moved(dx, dy=0.25 * (scale - 1), scale=scale), at, view, phase)
    if plain:
        return (np.clip(cv.img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return apply_camera(cv.img, cam, rng)
