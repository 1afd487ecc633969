"""The person model: an identity's persistent appearance and its drawing as a map of part labels."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import ImageDraw

from .rand import _jitter

# part labels of the 2x-supersampled label map
BG, SKIN, HAIR, UPPER, LOWER, SHOES, BAG, BACKPACK, HAT, LOGO, STRAP, OCCLUDER = range(12)
FRONT, BACK, SIDE = range(3)

_CLOTH = np.array([  # RGB in [0, 1]: black, charcoal, grey, white, navy, blue, denim, red, maroon, green,
    [.07, .07, .08], [.22, .22, .24], [.5, .5, .5], [.9, .9, .88], [.1, .13, .3], [.2, .35, .7],
    [.3, .4, .55], [.7, .12, .12], [.4, .1, .12], [.15, .4, .2], [.4, .4, .2], [.7, .62, .45],
    [.4, .27, .15], [.9, .55, .65], [.9, .8, .2], [.4, .2, .5], [.9, .5, .15], [.1, .5, .5],
    [.85, .78, .65],  # olive, khaki, brown, pink, yellow, purple, orange, teal, beige
])
_UPPER_W = np.array([8, 5, 6, 7, 4, 4, 2, 3, 2, 2, 2, 2, 2, 2, 1.5, 1.5, 1, 1.5, 2])
_LOWER_W = np.array([10, 5, 5, 1.5, 6, 2, 8, .5, .5, 1, 2, 4, 2, .5, .3, .3, .2, .3, 2])
_HAIR = np.array([[.05, .04, .04], [.2, .12, .07], [.4, .26, .14], [.8, .68, .4], [.6, .6, .6], [.45, .18, .08]])
_HAIR_W = np.array([6, 5, 3, 1.5, 1, 1])
_SHOES = np.array([[.06, .06, .06], [.9, .9, .9], [.35, .22, .12], [.45, .45, .48]])


@dataclass(frozen=True)
class _Identity:
    """Persistent appearance of one person (colours are RGB in [0, 1])."""

    height: float  # fraction of the camera's person height
    width: float  # body width factor
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    upper: np.ndarray
    upper_second: np.ndarray
    upper_pattern: str  # plain | hstripes | vstripes | checks | logo
    period: float  # pattern period, fraction of the person height
    upper_len: float  # hem height, fraction of the person height
    long_sleeves: bool
    lower: np.ndarray
    lower_kind: str  # trousers | shorts | skirt
    lower_checks: bool
    shoes: np.ndarray
    hat: np.ndarray | None
    backpack: np.ndarray | None
    bag: np.ndarray | None
    bag_side: int  # -1 left, +1 right
    logo_shape: int


def _pick(rng: np.random.Generator, table: np.ndarray, weights: np.ndarray,
          exclude: int = -1) -> tuple[int, np.ndarray]:
    """Draw a row of ``table`` [k, 3] by ``weights`` [k] (never ``exclude``); return it and a jittered copy."""
    w = weights.astype(float).copy()
    if exclude >= 0:
        w[exclude] = 0
    i = int(rng.choice(len(table), p=w / w.sum()))
    return i, _jitter(rng, table[i])


def _make_identity(rng: np.random.Generator) -> _Identity:
    iu, upper = _pick(rng, _CLOTH, _UPPER_W)
    _, upper_second = _pick(rng, _CLOTH, _UPPER_W, exclude=iu)
    il, lower = _pick(rng, _CLOTH, _LOWER_W)
    tone = rng.uniform()
    skin = (1 - tone) * np.array([.95, .78, .66]) + tone * np.array([.33, .21, .14])
    return _Identity(
        height=rng.uniform(0.88, 1.0),
        width=rng.uniform(0.8, 1.25),
        skin=_jitter(rng, skin, 0.04),
        hair=_pick(rng, _HAIR, _HAIR_W)[1],
        long_hair=rng.random() < 0.3,
        upper=upper,
        upper_second=upper_second,
        upper_pattern=str(rng.choice(["plain", "hstripes", "vstripes", "checks", "logo"], p=[.4, .2, .1, .12, .18])),
        period=rng.uniform(0.035, 0.08),
        upper_len=rng.uniform(0.47, 0.6),
        long_sleeves=rng.random() < 0.55,
        lower=lower,
        lower_kind=str(rng.choice(["trousers", "shorts", "skirt"], p=[.6, .2, .2])),
        lower_checks=rng.random() < 0.12,
        shoes=_jitter(rng, _SHOES[rng.integers(len(_SHOES))]),
        hat=_pick(rng, _CLOTH, _UPPER_W)[1] if rng.random() < 0.15 else None,
        backpack=_pick(rng, _CLOTH, _LOWER_W)[1] if rng.random() < 0.3 else None,
        bag=_pick(rng, _CLOTH, _UPPER_W)[1] if rng.random() < 0.25 else None,
        bag_side=int(rng.choice([-1, 1])),
        logo_shape=int(rng.integers(3)),
    )


_CLOTHING = ("upper", "upper_second", "upper_pattern", "period", "upper_len", "long_sleeves", "lower",
             "lower_kind", "lower_checks", "hat", "backpack", "bag", "logo_shape")


def _dressed_as(ident: _Identity, other: _Identity) -> _Identity:
    """``ident`` (body, skin, hair, shoes) in ``other``'s clothes and accessories."""
    return replace(ident, **{k: getattr(other, k) for k in _CLOTHING})


def _draw_person(draw: ImageDraw.ImageDraw, ident: _Identity, view: int, cx: float, feet: float, u: float,
                 phase: float) -> float:
    """Draw the part labels of one person (facing right when ``view == SIDE``); return the torso top row."""
    top = feet - u
    r = 0.062 * u
    ys, yh, yl = top + 0.145 * u, top + ident.upper_len * u, top + 0.49 * u
    side = view == SIDE
    sw = (0.09 if side else 0.14) * u * ident.width
    hw = (0.08 if side else 0.11) * u * ident.width
    leg_w = 0.075 * u * ident.width
    swing = np.sin(phase)

    def limb(x0, y0, x1, y1, part, w):
        draw.line([x0, y0, x1, y1], fill=part, width=max(1, int(round(w))))
        draw.ellipse([x1 - w / 2, y1 - w / 2, x1 + w / 2, y1 + w / 2], fill=part)

    if ident.backpack is not None and side:  # carried behind: drawn first so the torso overlaps it
        draw.rounded_rectangle([cx - sw - 0.09 * u, ys + 0.02 * u, cx - sw + 0.04 * u, yh - 0.05 * u],
                               radius=0.02 * u, fill=BACKPACK)
    if ident.long_hair and view != FRONT:
        draw.rectangle([cx - (0.5 if side else 1.0) * r * 1.1 - (0.3 * r if side else 0), top + r,
                        cx + (0.2 if side else 1.0) * r * 1.1, ys + 0.08 * u], fill=HAIR)

    # legs: hips to feet (front/back: spread a little; side: scissor with the walking phase)
    if side:
        feet_x = [cx + 0.14 * u * swing, cx - 0.14 * u * swing]
        hips_x = [cx, cx]
    else:
        feet_x = [cx - 0.055 * u - 0.01 * u * swing, cx + 0.055 * u + 0.01 * u * swing]
        hips_x = [cx - 0.045 * u, cx + 0.045 * u]
    leg_part = LOWER if ident.lower_kind == "trousers" else SKIN
    for hx, fx in zip(hips_x, feet_x):
        limb(hx, yl + 0.03 * u, fx, feet - 0.035 * u, leg_part, leg_w)
        if ident.lower_kind == "shorts":
            t = 0.4
            limb(hx, yl + 0.03 * u, hx + t * (fx - hx), yl + 0.03 * u + t * (feet - yl - 0.065 * u), LOWER,
                 leg_w * 1.25)
        shoe_dx = 0.03 * u if side else 0.0
        draw.ellipse([fx - 0.045 * u + shoe_dx, feet - 0.05 * u, fx + 0.045 * u + shoe_dx, feet], fill=SHOES)
    hip_w = hw * (1.6 if ident.lower_kind == "skirt" else 1.05)
    low_bottom = yl + (0.24 if ident.lower_kind == "skirt" else 0.06) * u
    draw.polygon([(cx - hw, yl - 0.02 * u), (cx + hw, yl - 0.02 * u), (cx + hip_w, low_bottom),
                  (cx - hip_w, low_bottom)], fill=LOWER)

    # arms behind the torso (the far arm in the side view)
    arm_w = 0.055 * u * ident.width
    hand_y = ys + 0.34 * u
    if side:
        arms = [(cx, ys + 0.02 * u, cx - 0.12 * u * swing, hand_y)]
    else:
        arms = [(cx - sw + 0.02 * u, ys + 0.02 * u, cx - sw - 0.02 * u, hand_y),
                (cx + sw - 0.02 * u, ys + 0.02 * u, cx + sw + 0.02 * u, hand_y)]

    def arm(x0, y0, x1, y1):
        limb(x0, y0, x1, y1, SKIN, arm_w)
        t = 0.85 if ident.long_sleeves else 0.35
        limb(x0, y0, x0 + t * (x1 - x0), y0 + t * (y1 - y0), UPPER, arm_w * 1.15)

    if side:
        arm(*arms[0])
    # torso
    draw.polygon([(cx - sw, ys), (cx + sw, ys), (cx + hw * 1.08, yh), (cx - hw * 1.08, yh)], fill=UPPER)
    draw.ellipse([cx - sw, ys - 0.025 * u, cx + sw, ys + 0.05 * u], fill=UPPER)
    if not side:
        for a in arms:
            arm(*a)
    else:
        arm(cx, ys + 0.02 * u, cx + 0.12 * u * swing, hand_y)
    # neck, head, hair, hat
    draw.rectangle([cx - 0.3 * r, top + 1.6 * r, cx + 0.3 * r, ys], fill=SKIN)
    draw.ellipse([cx - r * 0.9, top, cx + r * 0.9, top + 2 * r], fill=HAIR if view == BACK else SKIN)
    if view == FRONT:
        draw.pieslice([cx - r * 0.95, top - 0.05 * r, cx + r * 0.95, top + 1.6 * r], 180, 360, fill=HAIR)
        if ident.long_hair:
            draw.rectangle([cx - r, top + 0.6 * r, cx - 0.7 * r, ys + 0.05 * u], fill=HAIR)
            draw.rectangle([cx + 0.7 * r, top + 0.6 * r, cx + r, ys + 0.05 * u], fill=HAIR)
    elif side:
        draw.pieslice([cx - r * 0.95, top - 0.05 * r, cx + r * 0.95, top + 2 * r], 90, 300, fill=HAIR)
    if ident.hat is not None:
        draw.rectangle([cx - r, top - 0.15 * r, cx + r, top + 0.7 * r], fill=HAT)
        brim = (cx - 0.9 * r, cx + 1.6 * r) if side else (cx - 1.3 * r, cx + 1.3 * r)
        draw.rectangle([brim[0], top + 0.55 * r, brim[1], top + 0.8 * r], fill=HAT)
    # accessories on top of the torso
    if ident.backpack is not None and view == BACK:
        draw.rounded_rectangle([cx - 0.75 * sw, ys + 0.02 * u, cx + 0.75 * sw, yh - 0.04 * u],
                               radius=0.03 * u, fill=BACKPACK)
    if ident.backpack is not None and view == FRONT:
        for sx in (-0.55, 0.55):
            draw.line([cx + sx * sw, ys, cx + sx * sw * 0.9, ys + 0.2 * u], fill=STRAP, width=max(1, int(0.02 * u)))
    if ident.upper_pattern == "logo" and view == FRONT:
        lx, ly, ls = cx, ys + 0.1 * u, 0.045 * u
        box = [lx - ls, ly - ls, lx + ls, ly + ls]
        if ident.logo_shape == 0:
            draw.ellipse(box, fill=LOGO)
        elif ident.logo_shape == 1:
            draw.rectangle(box, fill=LOGO)
        else:
            draw.polygon([(lx, ly - ls), (lx + ls, ly + ls), (lx - ls, ly + ls)], fill=LOGO)
    if ident.bag is not None:
        bside = 0 if side else (ident.bag_side if view == FRONT else -ident.bag_side)
        bx = cx + bside * (hw + 0.05 * u)
        sx = cx - bside * sw * 0.8
        draw.line([sx, ys, bx, yh - 0.05 * u], fill=BAG, width=max(1, int(0.015 * u)))
        draw.rounded_rectangle([bx - 0.06 * u, yh - 0.06 * u, bx + 0.06 * u, yh + 0.08 * u], radius=0.015 * u,
                               fill=BAG)
    return ys

