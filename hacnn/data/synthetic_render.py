"""Drawing people for the synthetic re-id benchmark: shapes, canvas, attributes.

Everything is drawn with vectorised numpy straight onto the output pixel grid
(128x64), with anti-aliased edges from signed distances (a pixel's coverage is
``clip(0.5 - d / pixel, 0, 1)``). Each shape is evaluated only on the pixels
of its bounding box.

World units: a person is 1 tall, the top of the head at ``y = 0``, the soles
at ``y = 1``, the body centre at ``x = 0`` (the crop box of an image is a
rectangle in these units; see ``synthetic_plan.crop_box``). Identities are
dicts of palette names (:func:`sample_identity`) and go into the benchmark's
manifest. Scenes and cameras are in :mod:`hacnn.data.synthetic_scene`.
"""
from __future__ import annotations

import math

import numpy as np

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


# Body heights in world units (head top 0, soles 1): shoulders, waist and ankles; the
# crotch is the identity's ``legs`` value. Ground truth for the attention measures.
Y_SHOULDER, Y_WAIST, Y_ANKLE = 0.165, 0.47, 0.955
PARTS = ("head", "torso", "legs", "feet")


def body_parts(at: dict) -> dict[str, tuple[float, float]]:
    """Vertical extents (y0, y1) of the body parts of identity ``at``, in world units:
    head (head top to shoulders, with the neck), torso (shoulders to crotch, with the
    hips), legs (crotch to ankles), feet (ankles to soles)."""
    return {"head": (0.0, Y_SHOULDER), "torso": (Y_SHOULDER, at["legs"]),
            "legs": (at["legs"], Y_ANKLE), "feet": (Y_ANKLE, 1.0)}


# --- shapes: (bbox, signed distance) pairs in world units ---------------------

def ellipse(cx, cy, rx, ry, clip_y=None):
    """An ellipse; ``clip_y`` keeps only the part above that line."""
    def sdf(X, Y):
        d = ((X - cx) * (1 / rx)) ** 2 + ((Y - cy) * (1 / ry)) ** 2  # (h, w) from (1, w), (h, 1)
        d = np.sqrt(d, out=d)
        d -= 1
        d *= min(rx, ry)
        return d if clip_y is None else np.maximum(d, Y - clip_y, out=d)
    return (cx - rx, cy - ry, cx + rx, cy + ry), sdf


def rect(x0, y0, x1, y1):
    return (x0, y0, x1, y1), lambda X, Y: np.maximum(np.maximum(x0 - X, X - x1),
                                                     np.maximum(y0 - Y, Y - y1))


def trapezoid(cx, y0, y1, hw0, hw1):
    """A vertical trapezoid: half-width ``hw0`` at ``y0`` to ``hw1`` at ``y1``."""
    def sdf(X, Y):
        hw = hw0 + (hw1 - hw0) * np.clip((Y - y0) / (y1 - y0), 0, 1)  # (h, 1)
        return np.maximum(np.abs(X - cx) - hw, np.maximum(y0 - Y, Y - y1))
    hw = max(hw0, hw1)
    return (cx - hw, y0, cx + hw, y1), sdf


def capsule(ax, ay, bx, by, r0, r1=None):
    """A limb: the segment a-b thickened to radius ``r0`` (at a) .. ``r1`` (at b)."""
    r1 = r0 if r1 is None else r1
    dx, dy = bx - ax, by - ay
    n = dx * dx + dy * dy + 1e-12

    def sdf(X, Y):
        u, v = X - ax, Y - ay                         # (1, w), (h, 1)
        t = u * (dx / n) + v * (dy / n)               # (h, w) position along the segment
        t = np.minimum(np.maximum(t, 0, out=t), 1, out=t)
        d = np.hypot(u - t * dx, v - t * dy)
        d -= r0 if r0 == r1 else r0 + (r1 - r0) * t
        return d
    r = max(r0, r1)
    return (min(ax, bx) - r, min(ay, by) - r, max(ax, bx) + r, max(ay, by) + r), sdf


def _span(start: float, step: float, n: int, lo: float, hi: float) -> slice | None:
    """Indices i < n with ``start + i * step`` in [lo, hi] (``step`` may be negative)."""
    a, b = (lo - start) / step, (hi - start) / step
    a, b = max(0, math.ceil(min(a, b))), min(n - 1, math.floor(max(a, b)))
    return slice(a, b + 1) if a <= b else None


class Canvas:
    """A float32 RGB image, channels first (3, H, W), with the world coordinates of
    its pixel centres (channels first keeps numpy's inner loops long).

    Pixel column ``j`` lies at ``x = x0 + j * dx``, row ``i`` at ``y = y0 + i * dy``.
    """

    def __init__(self, img: np.ndarray, x0: float, dx: float, y0: float, dy: float):
        self.img, self.x0, self.dx, self.y0, self.dy = img, x0, dx, y0, dy
        h, w = img.shape[1:]
        self.xs = (x0 + dx * np.arange(w)).astype(np.float32)  # (W,)
        self.ys = (y0 + dy * np.arange(h)).astype(np.float32)  # (H,)
        self.px = math.sqrt(abs(dx * dy))  # pixel size, for anti-aliasing

    @classmethod
    def for_box(cls, box, height: int, width: int, fill=PLAIN) -> "Canvas":
        x0, y0, x1, y1 = box
        dx, dy = (x1 - x0) / width, (y1 - y0) / height
        img = np.empty((3, height, width), np.float32)
        img[:] = np.float32(fill)[:, None, None]
        return cls(img, x0 + dx / 2, dx, y0 + dy / 2, dy)

    def moved(self, dx=0.0, dy=0.0, scale=1.0, mirror=False) -> "Canvas":
        """The same pixels seen from a person at ``x=dx``, feet at ``1+dy``, ``scale`` tall."""
        sx = -1 / scale if mirror else 1 / scale
        return Canvas(self.img, (self.x0 - dx) * sx, self.dx * sx,
                      (self.y0 - 1 - dy) / scale + 1, self.dy / scale)

    def paint(self, shape, color, shade: float = 1.0) -> None:
        """Cover ``shape`` with ``color`` times ``shade``.

        ``color``: RGB, a function of (X, Y) -> (h, w, 3), or None for the
        pixels already there (``shade < 1`` then casts a shadow).
        """
        (x0, y0, x1, y1), sdf = shape
        h, w = self.img.shape[1:]
        cs = _span(self.x0, self.dx, w, x0 - self.px, x1 + self.px)
        rs = _span(self.y0, self.dy, h, y0 - self.px, y1 + self.px)
        if cs is None or rs is None:
            return
        X, Y = self.xs[None, cs], self.ys[rs, None]  # (1, w), (h, 1)
        alpha = sdf(X, Y)  # a fresh (h, w) array: coverage = clip(0.5 - d / pixel, 0, 1)
        alpha *= -1 / self.px
        alpha += 0.5
        alpha = np.minimum(np.maximum(alpha, 0, out=alpha), 1, out=alpha)
        region = self.img[:, rs, cs]  # (3, h, w)
        col = region if color is None else color(X, Y) if callable(color) else \
            np.asarray(color, np.float32)[:, None, None]
        diff = col * shade - region if shade != 1 else col - region
        diff *= alpha
        region += diff


# --- people -------------------------------------------------------------------

def _upper_fill(at: dict):
    """Upper-body colour, solid (RGB) or a function of (X, Y) -> (3, h, w): stripes, checks."""
    c1 = np.asarray(PALETTES["upper"][at["upper"]], np.float32)[:, None, None]
    c2 = np.asarray(PALETTES["upper"].get(at["upper2"], PALETTES["lower"].get(at["upper2"])),
                    np.float32)[:, None, None]
    if at["pattern"] == "stripes":
        return lambda X, Y: np.where(np.floor(Y / 0.045) % 2 == 0, c1, c2)
    if at["pattern"] == "checks":
        return lambda X, Y: np.where((np.floor(X / 0.04) + np.floor(Y / 0.04)) % 2 == 0, c1, c2)
    return PALETTES["upper"][at["upper"]]


def draw_person(cv: Canvas, at: dict, view: str, phase: float) -> None:
    """Draw identity ``at`` facing ``view`` at walking ``phase`` (radians).

    Back to front: legs and shoes, far arm, hips or skirt, torso (pattern, a
    logo on the front only), bags (a backpack from behind, its straps from
    the front), arms, head with hair and hat. ``left`` mirrors ``right``.
    """
    side = view in ("left", "right")
    if view == "left":
        cv = cv.moved(mirror=True)
    pal = PALETTES
    skin, hair = pal["skin"][at["skin"]], pal["hair"][at["hair"]]
    lower, shoes = pal["lower"][at["lower"]], pal["shoes"][at["shoes"]]
    upper = _upper_fill(at)
    bag = pal["bag"].get(at["bag_color"], (0, 0, 0))
    b, s = at["build"], np.sin(phase)
    sw, ww = (0.07 * b, 0.055 * b) if side else (0.105 * b, 0.085 * b)  # shoulder, waist
    y_sh, y_waist, y_crotch = Y_SHOULDER, Y_WAIST, at["legs"]
    y_knee, y_ankle = (y_crotch + Y_ANKLE) / 2, Y_ANKLE
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

    # the far arm (side views), then hips or skirt in the lower garment
    swing = 0.1 * s
    if side:
        _arm(cv, at, 0.0, y_sh + 0.02, swing, upper, skin, 0.7)
    if kind == "skirt":
        cv.paint(trapezoid(0, y_waist, y_knee - 0.03, ww, ww + (0.05 if side else 0.06)), lower)
    else:
        cv.paint(rect(-ww - 0.004, y_waist, ww + 0.004, y_crotch + 0.01), lower)

    # torso, rounded shoulders
    shaded = lambda X, Y: (upper(X, Y) if callable(upper) else np.float32(upper)[:, None, None]) \
        * (1 - 0.3 * np.minimum((X / sw) ** 2, 1))  # noqa: E731 (a round body)
    cv.paint(trapezoid(0, y_sh + 0.01, y_waist + 0.03, sw, ww), shaded)
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
