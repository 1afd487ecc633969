"""Synthetic: a procedural pedestrian re-ID benchmark written in the Market-1501 layout.

No download: on first use the images are rendered into ``<root>/<name>/<parameters>/`` (``name``:
``synthetic``, ``synthetic_market`` or ``synthetic_msmt17``) and reused afterwards. Each identity has a
persistent appearance (clothing colours and patterns, sleeve and lower garment type, body shape, skin,
hair, hat, bag, backpack); each camera has its own nuisance model that a standard colour jitter does not
invert: per-channel white balance and gamma, a hue rotation, a saturation change, lifted blacks /
compressed whites, its own view of a shared site (background layout and colours), preferred viewpoints
(front / back / side, which changes what is visible: a logo only from the front, a backpack as straps
from the front), person scale and position, blur, resolution loss and sensor noise. Images also vary per
frame (walking phase, mirroring, position, lighting, partial occlusion).

Statistics with the defaults (seed 0): 120 train ids (~1,650 images), 100 test ids (~300 query,
~1,100 gallery) plus 100 distractor images, 6 cameras, 128x64 pixels. :class:`SyntheticMarket` and
:class:`SyntheticMSMT17` are the same generator at the real datasets' sizes (exact split sizes, see
``num_train_images``), 256x128: Market-1501's 751 / 12,936 train, 3,368 query, 15,913 gallery, 6 cameras;
MSMT17's 1,041 / 32,621 train, 11,659 query, 82,161 gallery, 15 cameras.

File names follow Market-1501: ``PPPP_cCsS_FFFFFF_BB.jpg`` (pid, 1-based camera, sequence, frame, box);
from 10 cameras on the camera takes two digits (``0001_c12s1_000003_00.jpg``).
Distractors in the gallery have pid 0 (as in Market-1501; they match no query); there is no junk (-1).
Each test identity is seen by >= 2 cameras with >= 2 images each; the first image per camera is a query,
the rest go to the gallery, so every query has a gallery match on another camera.

Rendering is deterministic: every image draws from its own ``numpy.random.Generator`` seeded by
(seed, pid, camera, frame), so the bytes do not depend on generation order, nor on the number of
processes that render a set (one per available core by default, with a progress bar when verbose).
"""

from __future__ import annotations

import colorsys
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm.auto import tqdm

from .base import ReIDDataset
from .layout import parse_market_layout

log = logging.getLogger(__name__)

_VERSION = 1  # bump whenever the rendering changes, so cached folders are not reused by mistake
_PATTERN = re.compile(r"([-\d]+)_c(\d+)s")  # PPPP_cCsS_FFFFFF_BB.jpg -> pid PPPP, camera C (1-based, 1..99)
_JPEG_QUALITY = 90
(_STREAM_PLAN, _STREAM_ID, _STREAM_CAM, _STREAM_IMG, _STREAM_DISTRACTOR, _STREAM_SITE, _STREAM_COUNTS,
 _STREAM_SLOT, _STREAM_OUTFIT, _STREAM_TWIN, _STREAM_VISIT) = range(11)
_JOB_IMAGES = 200  # images per job of the process pool
_IN_PROCESS_BELOW = 1000  # smaller sets render in the calling process (workers=None)

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


@dataclass(frozen=True)
class _Camera:
    """Nuisance model of one camera."""

    colour_matrix: np.ndarray  # [3, 3] white balance, saturation and hue rotation, applied to RGB rows
    gamma: np.ndarray  # [3] per-channel tone curve exponent
    black: float
    white: float
    light_dir: np.ndarray  # [2] lighting gradient (x, y)
    noise: float  # sensor noise std on the [0, 1] scale
    blur: float  # Gaussian blur radius in output pixels
    resolution: float  # downscale factor before upscaling back (1 = no loss)
    scale: float  # person height / image height
    foot: float  # feet row / image height
    view_p: np.ndarray  # [3] probabilities of front / back / side views
    background: np.ndarray  # [bh, bw, 3] scene at 2x resolution, cropped per image
    clutter: np.ndarray  # [k, 3] scene colours, reused for occluders


@dataclass(frozen=True)
class Nuisances:
    """Optional nuisances beyond the camera models, as in harder data (MSMT17 against Market-1501).

    The defaults add nothing and draw nothing, so a set without them is byte-identical to one rendered
    before they existed. A visit is a run of consecutive frames of one identity on one camera.

    Attributes:
        time_slots: illuminants per camera (time of day, lights on or off): slot 0 is the camera's own,
            each other slot changes its white balance, hue and brightness; every visit draws a slot.
        slot_strength: size of those changes (1: gains of sigma 0.15, hue up to +-0.35 rad, brightness
            sigma 0.3).
        outfits: clothing modes per identity (upper garment, trousers or skirt, hat, bag, backpack); every
            visit draws one, so an identity can look different on different cameras or days.
        burst: longest visit, in frames: its frames share view, pose, position, background, lighting and
            occluder (near-duplicates, as a tracker's boxes); visit lengths are drawn in 1..burst.
        lookalikes: share of identities dressed as another identity of the same split (their body, hair,
            skin and shoes stay their own).
        box_jitter: factor on the per-image jitter of the person's scale, position and feet row.
        count_spread: sigma of the log-normal weights spreading the images among identities (sets with
            split sizes only; 0.5 without nuisances): larger values give a longer tail.
    """

    time_slots: int = 1
    slot_strength: float = 1.0
    outfits: int = 1
    burst: int = 1
    lookalikes: float = 0.0
    box_jitter: float = 1.0
    count_spread: float = 0.5

    def tag(self) -> str:
        """The folder-name suffix of the nuisances that differ from the defaults ('' for none)."""
        short = {"time_slots": "ts", "slot_strength": "ss", "outfits": "of", "burst": "bu", "lookalikes": "la",
                 "box_jitter": "bj", "count_spread": "cs"}
        default = Nuisances()
        return "".join(f"_{short[k]}{v!r}" for k, v in vars(self).items() if v != getattr(default, k))


def _nuisances(value) -> Nuisances:
    """``value`` (None, a mapping or :class:`Nuisances`) as :class:`Nuisances`; a bad key or value raises a
    ValueError naming it."""
    valid = sorted(vars(Nuisances()))
    if value is None or isinstance(value, Nuisances):
        return value or Nuisances()
    if not isinstance(value, dict):
        raise ValueError(f"Synthetic: nuisances must be a mapping with keys from {valid}, got {value!r}")
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ValueError(f"Synthetic: nuisances.{unknown[0]} is not a nuisance; valid: {valid}")
    for key, v in value.items():
        kind = type(getattr(Nuisances(), key))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and v != int(v)):
            raise ValueError(f"Synthetic: nuisances.{key} must be {'an integer' if kind is int else 'a number'}, "
                             f"got {v!r}")
    n = Nuisances(**{k: type(getattr(Nuisances(), k))(v) for k, v in value.items()})
    checks = {"time_slots": (n.time_slots >= 1, ">= 1"), "slot_strength": (n.slot_strength >= 0, ">= 0"),
              "outfits": (n.outfits >= 1, ">= 1"), "burst": (n.burst >= 1, ">= 1"),
              "lookalikes": (0 <= n.lookalikes <= 1, "in [0, 1]"), "box_jitter": (n.box_jitter >= 0, ">= 0"),
              "count_spread": (n.count_spread >= 0, ">= 0")}
    for key, (ok, expected) in checks.items():
        if not ok:
            raise ValueError(f"Synthetic: nuisances.{key} must be {expected}, got {getattr(n, key)!r}")
    return n


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


def _jitter(rng: np.random.Generator, colour: np.ndarray, std: float = 0.08) -> np.ndarray:
    return np.clip(colour * np.exp(rng.normal(0, std, 3)), 0, 1)


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


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """[h, w] low-frequency noise in about [-1, 1] (bicubic upsampling of a coarse random grid)."""
    coarse = rng.uniform(-1, 1, (cells, max(2, cells * w // max(h, 1)))).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))


def _scene_colours(rng: np.random.Generator) -> np.ndarray:
    """[6, 3] colours of the site all cameras look at (wall, floor, four for doors/shops/poles)."""
    hue = rng.uniform()
    return np.stack([_hsv(hue + rng.normal(0, 0.15), rng.uniform(0.05, 0.45), rng.uniform(0.25, 0.85))
                     for _ in range(6)])


def _make_background(rng: np.random.Generator, site: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A camera's scene [h, w, 3] (wall, tiled floor, doors/windows, poles) and its colours [6, 3].

    The colours are the shared ``site`` colours, shuffled and varied per camera, so that the background
    hints at the camera without giving it away."""
    colours = np.stack([_jitter(rng, c, 0.2) for c in site[rng.permutation(len(site))]])
    horizon = int(h * rng.uniform(0.35, 0.7))
    img = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(img)
    as8 = lambda c: tuple(int(v * 255) for v in c)  # noqa: E731
    draw.rectangle([0, 0, w, horizon], fill=as8(colours[0]))
    draw.rectangle([0, horizon, w, h], fill=as8(colours[1]))
    for _ in range(rng.integers(3, 9)):  # doors, windows, shop fronts, poles
        x0, bw = rng.uniform(0, w), rng.uniform(0.03, 0.25) * w
        y0 = rng.uniform(0, horizon * 0.8)
        draw.rectangle([x0, y0, x0 + bw, rng.uniform(y0 + 0.1 * h, horizon + 0.05 * h)],
                       fill=as8(colours[rng.integers(2, 6)]))
    tile = rng.uniform(0.04, 0.12) * h
    floor_dark = as8(colours[1] * 0.75)
    for y in np.arange(horizon, h, tile):
        draw.line([0, y, w, y], fill=floor_dark, width=1 + int(h > 200))
    if rng.random() < 0.6:
        for x in np.arange(rng.uniform(0, tile), w, tile * rng.uniform(1, 3)):
            draw.line([x, horizon, x + (x - w / 2) * 0.6, h], fill=floor_dark, width=1 + int(h > 200))
    arr = np.asarray(img, dtype=np.float32) / 255
    arr = arr * (1 + 0.15 * _smooth_noise(rng, h, w, 6)[..., None])
    return np.clip(arr, 0, 1), colours


_YIQ = np.array([[.299, .587, .114], [.596, -.274, -.322], [.211, -.523, .312]])


def _colour_model(gains: np.ndarray, theta: float, sat: float = 1.0) -> np.ndarray:
    """[3, 3] matrix acting on column RGB vectors: per-channel ``gains``, then a hue rotation by ``theta``
    radians and a saturation factor ``sat`` in YIQ space."""
    c, s = np.cos(theta), np.sin(theta)
    chroma = np.array([[1, 0, 0], [0, sat * c, -sat * s], [0, sat * s, sat * c]])
    return np.linalg.inv(_YIQ) @ chroma @ _YIQ @ np.diag(gains)


def _make_camera(rng: np.random.Generator, site: np.ndarray, height: int, width: int, shift: float,
                 noise: float) -> _Camera:
    gains = np.exp(rng.normal(0, 0.1 * shift, 3))
    sat = np.exp(rng.normal(0, 0.2 * shift))
    theta = rng.uniform(-0.3, 0.3) * shift  # hue rotation in radians
    matrix = _colour_model(gains, theta, sat)
    view_p = 0.85 * rng.dirichlet([1.0, 1.0, 1.0]) + 0.05
    background, clutter = _make_background(rng, site, int(2 * height * 1.25), int(2 * width * 3))
    return _Camera(
        colour_matrix=matrix.T.astype(np.float32),
        gamma=np.exp(rng.normal(0, 0.15 * shift, 3)).astype(np.float32),
        black=float(rng.uniform(0, 0.12) * shift),
        white=float(1 - rng.uniform(0, 0.12) * shift),
        light_dir=rng.normal(0, 0.25, 2),
        noise=float(rng.uniform(0.01, 0.04) * noise),
        blur=float(rng.uniform(0, 0.8) * noise * width / 64),
        resolution=float(np.clip(1 - rng.uniform(0, 0.5) * noise, 0.25, 1)),
        scale=float(rng.uniform(0.78, 0.94)),
        foot=float(rng.uniform(0.93, 0.98)),
        view_p=view_p / view_p.sum(),
        background=background,
        clutter=clutter,
    )


def _slot_camera(cam: _Camera, rng: np.random.Generator, strength: float) -> _Camera:
    """``cam`` under another illuminant: new channel gains, a hue rotation and a brightness factor
    composed with its colour model, and a moved light gradient."""
    gains = np.exp(rng.normal(0, 0.15 * strength, 3)) * np.exp(rng.normal(0, 0.3 * strength))
    theta = rng.uniform(-0.35, 0.35) * strength
    light = _colour_model(gains, theta)
    return replace(cam, colour_matrix=(light.T @ cam.colour_matrix).astype(np.float32),
                   light_dir=cam.light_dir + rng.normal(0, 0.25 * strength, 2))


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


def _draw_occluder(draw: ImageDraw.ImageDraw, rng: np.random.Generator, h: int, w: int) -> None:
    kind = rng.integers(3)
    if kind == 0:  # bench, car bonnet, railing across the bottom
        draw.rectangle([rng.uniform(-0.5, 0.2) * w, h * (1 - rng.uniform(0.15, 0.4)), rng.uniform(0.8, 1.5) * w, h],
                       fill=OCCLUDER)
    elif kind == 1:  # pole or passer-by at one edge
        bw = rng.uniform(0.15, 0.4) * w
        x0 = -1 if rng.random() < 0.5 else w - bw
        draw.rectangle([x0, rng.uniform(-0.2, 0.5) * h, x0 + bw, h], fill=OCCLUDER)
    else:  # another head and shoulders in front
        cx = rng.uniform(0, w)
        draw.ellipse([cx - 0.4 * w, h * (1 - rng.uniform(0.2, 0.45)), cx + 0.4 * w, h * 1.3], fill=OCCLUDER)


def _render(ident: _Identity, cam: _Camera, rng: np.random.Generator, height: int, width: int,
            occlusion: float, shot: np.random.Generator | None = None, box_jitter: float = 1.0) -> np.ndarray:
    """Render one image: uint8 array [height, width, 3].

    ``shot``: when given, the draws that frame the picture (view, pose, position, mirroring, occluder,
    background crop, lighting) come from it, and ``rng`` adds small per-frame changes and the sensor noise:
    frames rendered with one ``shot`` are near-duplicates. Without it every draw comes from ``rng``."""
    frame = rng
    rng = shot or rng
    h2, w2 = 2 * height, 2 * width  # 2x supersampling for anti-aliased edges
    view = int(rng.choice(3, p=cam.view_p))
    u = h2 * cam.scale * ident.height * np.exp(rng.normal(0, 0.04 * box_jitter))
    cx = w2 / 2 + rng.normal(0, 0.06 * box_jitter) * w2
    feet = h2 * (cam.foot + rng.normal(0, 0.015 * box_jitter))
    phase = rng.uniform(0, 2 * np.pi)
    if shot is not None:  # the next frame of the visit: a step further, a little displaced
        u *= np.exp(frame.normal(0, 0.01))
        cx += frame.normal(0, 0.01) * w2
        phase += frame.uniform(0.3, 0.8)
    label_img = Image.new("L", (w2, h2), BG)
    draw = ImageDraw.Draw(label_img)
    torso_top = _draw_person(draw, ident, view, cx, feet, u, phase)
    if rng.random() < 0.5:  # walking left instead of right / mirrored scene position
        label_img = label_img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        cx = w2 - cx
        draw = ImageDraw.Draw(label_img)
    occluded = rng.random() < occlusion
    if occluded:
        _draw_occluder(draw, rng, h2, w2)
    labels = np.asarray(label_img)

    palette = np.zeros((12, 3), np.float32)
    for part, colour in ((SKIN, ident.skin), (HAIR, ident.hair), (UPPER, ident.upper), (LOWER, ident.lower),
                         (SHOES, ident.shoes), (BAG, ident.bag), (BACKPACK, ident.backpack), (HAT, ident.hat),
                         (LOGO, ident.upper_second), (STRAP, ident.backpack)):
        if colour is not None:
            palette[part] = colour
    palette[STRAP] *= 0.7
    palette[OCCLUDER] = _jitter(rng, cam.clutter[rng.integers(len(cam.clutter))] * rng.uniform(0.4, 1.0), 0.2)
    img = palette[labels]

    ys = np.arange(h2, dtype=np.float32)[:, None]  # [h2, 1] and [1, w2]: masks below broadcast to [h2, w2]
    xs = np.arange(w2, dtype=np.float32)[None, :]
    period = max(ident.period * u, 2.0)
    stripe_y = ((ys - torso_top) // period) % 2 == 1
    stripe_x = ((xs - cx + period / 2) // period) % 2 == 1
    pattern = {"hstripes": stripe_y, "vstripes": stripe_x, "checks": stripe_x ^ stripe_y}.get(ident.upper_pattern)
    if pattern is not None:
        img[(labels == UPPER) & pattern] = ident.upper_second
    if ident.lower_checks:
        img[(labels == LOWER) & (stripe_x ^ stripe_y)] *= 0.6
    body = (labels != BG) & (labels != OCCLUDER)
    shade = 1 - 0.35 * np.clip(((xs - cx) / (0.22 * u)) ** 2, 0, 1)  # rounded body: darker at the sides
    img *= np.where(body, shade, 1.0)[..., None]

    bh, bw = cam.background.shape[:2]
    oy, ox = rng.integers(0, bh - h2 + 1), rng.integers(0, bw - w2 + 1)
    crop = cam.background[oy:oy + h2, ox:ox + w2]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    img = np.where((labels == BG)[..., None], crop, img)
    img = 0.25 * (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2])  # 2x2 box filter

    # lighting: per-image brightness and a gradient around the camera's light direction
    gy = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    gx = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    ldir = cam.light_dir + rng.normal(0, 0.1, 2)
    img = img * (np.exp(rng.normal(0, 0.12)) * (1 + ldir[0] * gx + ldir[1] * gy))[..., None]
    # camera tone: white balance + saturation + hue rotation, per-channel gamma, black lift / white clip
    img = np.clip(img @ cam.colour_matrix, 0, 1) ** cam.gamma
    img = cam.black + (cam.white - cam.black) * img

    pil = Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8))
    if cam.resolution < 1:
        small = (max(4, round(width * cam.resolution)), max(8, round(height * cam.resolution)))
        bilinear = Image.Resampling.BILINEAR
        pil = pil.resize(small, bilinear).resize((width, height), bilinear)
    if cam.blur > 0.05:
        pil = pil.filter(ImageFilter.GaussianBlur(cam.blur))
    out = np.asarray(pil, dtype=np.float32) / 255
    out = out + frame.normal(0, cam.noise, out.shape) + frame.normal(0, cam.noise, out.shape[:2] + (1,))
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def _write_jpeg(image: np.ndarray, path: Path) -> None:
    """Save a uint8 [H, W, 3] array as a JPEG with fixed settings (byte-reproducible)."""
    Image.fromarray(image).save(path, format="JPEG", quality=_JPEG_QUALITY)


def _plan_identity(rng: np.random.Generator, num_cameras: int, images_per_id: tuple[int, int]) -> list[int]:
    """Camera (0-based) of each image of one identity: >= 2 cameras, >= 2 images on each."""
    n = int(rng.integers(images_per_id[0], images_per_id[1] + 1))
    return _plan_cameras(rng, num_cameras, n)


def _plan_cameras(rng: np.random.Generator, num_cameras: int, n: int, k: int | None = None) -> list[int]:
    """Cameras (0-based, sorted) of ``n`` images on ``k`` cameras (drawn when None), >= 2 images on each."""
    if k is None:
        k = min(2 + int(rng.binomial(num_cameras - 2, 0.25)), n // 2)
    cams = np.sort(rng.choice(num_cameras, size=k, replace=False))
    counts = 2 + rng.multinomial(n - 2 * k, np.full(k, 1.0 / k))
    return [int(c) for c, m in zip(cams, counts) for _ in range(m)]


def _allocate(rng: np.random.Generator, total: int, low: np.ndarray,
              high: int | np.ndarray | None = None, spread: float = 0.5) -> np.ndarray:
    """Split ``total`` into one count per entry of ``low`` [n], with ``low <= count <= high`` (an int or [n]).

    The counts above ``low`` are spread by log-normal weights of sigma ``spread`` (some identities are seen
    much more often than others); what a capped entry would exceed goes to the others."""
    counts = np.asarray(low, dtype=np.int64).copy()
    weights = rng.lognormal(0.0, spread, len(counts))
    left = total - int(counts.sum())
    while left > 0:
        p = weights if high is None else np.where(counts < high, weights, 0.0)
        counts += rng.multinomial(left, p / p.sum())
        over = 0 if high is None else np.maximum(counts - high, 0)
        counts -= over
        left = int(np.sum(over))
    return counts


def _plan_set(*, num_train_ids: int, num_test_ids: int, num_cameras: int, images_per_id: tuple[int, int],
              num_train_images: int | None, num_query: int | None, num_gallery: int | None, seed: int,
              nuisances: Nuisances | None = None, **_) -> list[tuple[int, list[tuple[str, int, int]]]]:
    """(pid, [(split, camera, frame), ...]) of every identity, pids 1.. (train first, then test).

    Without split sizes every identity draws its number of images from ``images_per_id``. With them,
    the training images, the queries and the gallery images are first split among the identities
    (stream ``_STREAM_COUNTS``): a test identity with q queries is seen by q cameras, its first image on
    each is the query, so every query has a gallery image on the same camera and on >= 1 other. The
    training identities are seen by as many cameras on average as the test identities."""
    sized = num_train_images is not None
    if sized:
        rng = _rng(seed, _STREAM_COUNTS)
        spread = (nuisances or Nuisances()).count_spread
        train_n = _allocate(rng, num_train_images, np.full(num_train_ids, 4), spread=spread)
        test_k = _allocate(rng, num_query, np.full(num_test_ids, 2), num_cameras)
        test_g = _allocate(rng, num_gallery, test_k, spread=spread)  # >= one gallery image per query camera
        train_high = np.minimum(num_cameras, train_n // 2)  # >= 2 images per camera
        train_cams = round(num_query * num_train_ids / num_test_ids)
        train_k = _allocate(rng, min(train_cams, int(train_high.sum())), np.full(num_train_ids, 2), train_high)
    plan = []
    for pid in range(1, num_train_ids + num_test_ids + 1):
        rng = _rng(seed, _STREAM_PLAN, pid)
        test = pid - num_train_ids - 1  # index among the test identities when >= 0
        if not sized:
            cams = _plan_identity(rng, num_cameras, images_per_id)
        elif test < 0:
            cams = _plan_cameras(rng, num_cameras, int(train_n[pid - 1]), int(train_k[pid - 1]))
        else:
            cams = _plan_cameras(rng, num_cameras, int(test_k[test] + test_g[test]), int(test_k[test]))
        seen: set[int] = set()
        images = []
        for frame, cam in enumerate(cams):
            if test < 0:
                split = "bounding_box_train"
            else:  # the first image per camera is a query, the rest gallery
                split = "bounding_box_test" if cam in seen else "query"
                seen.add(cam)
            images.append((split, cam, frame))
        plan.append((pid, images))
    return plan


class Synthetic(ReIDDataset):
    """Procedural pedestrian re-ID benchmark (see the module docstring).

    The constructor's defaults are the full-strength camera model (camera_shift 1.0, noise 1.0, occlusion
    0.2). ``python train.py`` trains on ``conf/dataset/synthetic.yaml`` instead (0.3 / 0.3 / 0.1), so
    ``Synthetic(root)`` is not the default benchmark: pass those values to get it.

    Args:
        root: data root; images go to ``<root>/<name>/<folder named by every parameter>`` (``name``:
            ``synthetic``, or the sized sets' ``synthetic_market`` / ``synthetic_msmt17``).
        num_train_ids / num_test_ids: identities in the training / query+gallery splits.
        num_cameras: 2..99 (written as ``c1`` .. ``c99`` in the file names).
        images_per_id: inclusive (min, max) images per identity; min >= 4 (2 cameras x 2 images).
            Not used when the split sizes are given.
        num_train_images / num_query / num_gallery: exact split sizes (all three or none):
            training images (>= 4 per training id), queries (2..num_cameras per test id: one per
            camera that sees the id) and gallery images of the test ids (>= num_query; the
            distractors come on top). None: each identity draws its size from ``images_per_id``.
        num_distractors: gallery images of unrelated people (pid 0).
        height / width: image size in pixels.
        camera_shift: strength of the per-camera colour model (white balance, gamma, hue, saturation,
            black/white levels); 0 disables it.
        noise: strength of the per-camera sensor noise, blur and resolution loss; 0 disables them.
        occlusion: probability that an image is partly occluded.
        seed: generation seed; same parameters and seed give byte-identical files.
        workers: processes that render a set not yet on disk; None: one per available core (one for
            sets under 1,000 images). The files do not depend on it.
        verbose, on_bad_image: see :class:`~mqreid.data.base.ReIDDataset` (the generated files are
            checked like any dataset's); ``verbose`` also shows a progress bar while rendering.
    """

    name = "synthetic"

    def __init__(
        self,
        root: str | Path,
        *,
        num_train_ids: int = 120,
        num_test_ids: int = 100,
        num_cameras: int = 6,
        images_per_id: tuple[int, int] = (8, 20),
        num_train_images: int | None = None,
        num_query: int | None = None,
        num_gallery: int | None = None,
        num_distractors: int = 100,
        height: int = 128,
        width: int = 64,
        camera_shift: float = 1.0,
        noise: float = 1.0,
        occlusion: float = 0.2,
        seed: int = 0,
        nuisances: Nuisances | dict | None = None,
        workers: int | None = None,
        verbose: bool = True,
        on_bad_image: str = "error",
    ) -> None:
        self.params = dict(num_train_ids=num_train_ids, num_test_ids=num_test_ids, num_cameras=num_cameras,
                           images_per_id=images_per_id, num_train_images=num_train_images, num_query=num_query,
                           num_gallery=num_gallery, num_distractors=num_distractors, height=height,
                           width=width, camera_shift=float(camera_shift), noise=float(noise),
                           occlusion=float(occlusion), seed=int(seed))
        _validate(**self.params)
        self.params["nuisances"] = _nuisances(nuisances)
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"{type(self).__name__}: workers must be None or >= 1, got {workers!r}")
        folder = Path(root) / self.name / self.folder_name(**self.params)
        if not folder.is_dir():
            _generate_atomically(folder, workers=workers, progress=verbose, desc=self.name, **self.params)
        # Junk rule: no junk; the distractors (pid 0) are in the gallery only.
        train, query, gallery = parse_market_layout(folder, _PATTERN, example="0001_c1s1_000000_00.jpg")
        super().__init__(train, query, gallery, root=folder, verbose=verbose, on_bad_image=on_bad_image)

    @staticmethod
    def folder_name(*, num_train_ids: int, num_test_ids: int, num_cameras: int, images_per_id: tuple[int, int],
                    num_distractors: int, height: int, width: int, camera_shift: float, noise: float,
                    occlusion: float, seed: int, num_train_images: int | None = None, num_query: int | None = None,
                    num_gallery: int | None = None, nuisances: Nuisances | None = None) -> str:
        """Folder name that encodes every generation parameter (and the renderer version)."""
        sizes = (f"_img{images_per_id[0]}-{images_per_id[1]}" if num_train_images is None
                 else f"_n{num_train_images}-{num_query}-{num_gallery}")
        return (f"v{_VERSION}_ids{num_train_ids}-{num_test_ids}_d{num_distractors}_cam{num_cameras}"
                f"{sizes}_{height}x{width}_shift{camera_shift!r}_noise{noise!r}_occ{occlusion!r}_seed{seed}"
                f"{(nuisances or Nuisances()).tag()}")


class _SizedSet(Synthetic):
    """:class:`Synthetic` with the class's ``defaults`` (any of them can be overridden)."""

    defaults: dict = {}

    def __init__(self, root: str | Path, **kwargs) -> None:
        super().__init__(root, **{**self.defaults, **kwargs})


class SyntheticMarket(_SizedSet):
    """:class:`Synthetic` at Market-1501's size and resolution (the defaults below; any can be overridden).

    751 training ids with 12,936 images, 750 test ids with 3,368 queries and 13,120 gallery images, plus
    2,793 distractors (Market-1501's 15,913 gallery images in all), 6 cameras, 256x128, the benchmark's
    camera model (camera_shift 0.3, noise 0.3, occlusion 0.1). ``dataset=synthetic_market``."""

    name = "synthetic_market"
    defaults = dict(num_train_ids=751, num_test_ids=750, num_cameras=6, num_train_images=12936, num_query=3368,
                    num_gallery=13120, num_distractors=2793, height=256, width=128, camera_shift=0.3, noise=0.3,
                    occlusion=0.1)


class SyntheticMSMT17(_SizedSet):
    """:class:`Synthetic` at MSMT17's size and resolution (the defaults below; any can be overridden).

    1,041 training ids with 32,621 images, 3,060 test ids with 11,659 queries and 82,161 gallery images,
    no distractors, 15 cameras, 256x128, the benchmark's camera model. ``dataset=synthetic_msmt17``."""

    name = "synthetic_msmt17"
    defaults = dict(num_train_ids=1041, num_test_ids=3060, num_cameras=15, num_train_images=32621,
                    num_query=11659, num_gallery=82161, num_distractors=0, height=256, width=128, camera_shift=0.3,
                    noise=0.3, occlusion=0.1)


class SyntheticHard(_SizedSet):
    """:class:`Synthetic` with the nuisances of harder data (:class:`Nuisances`), sized for a CPU: 15
    cameras, stronger camera models, illuminants that change within a camera, tracklet bursts, look-alike
    identities, a long tail of images per identity, more box jitter and occlusion. The values below are
    frozen by the calibration of docs/benchmark-hard.md (the starting values with one outfit per identity;
    ``nuisances.outfits=2`` gives the uncalibrated start). ``dataset=synthetic_hard``, trained with the
    synthetic recipe."""

    name = "synthetic_hard"
    defaults = dict(num_train_ids=350, num_test_ids=300, num_cameras=15, num_train_images=7000, num_query=900,
                    num_gallery=3600, num_distractors=500, height=128, width=64, camera_shift=0.8, noise=0.5,
                    occlusion=0.2, nuisances=dict(time_slots=3, outfits=1, burst=4, lookalikes=0.15, box_jitter=1.5,
                                                  count_spread=1.0))


SYNTHETIC_SETS: dict[str, type[Synthetic]] = {cls.name: cls for cls in (Synthetic, SyntheticMarket, SyntheticMSMT17,
                                                                         SyntheticHard)}


def _validate(*, num_train_ids, num_test_ids, num_cameras, images_per_id, num_train_images, num_query, num_gallery,
              num_distractors, height, width, camera_shift, noise, occlusion, seed, **_) -> None:
    def need(ok: bool, option: str, expected: str, value) -> None:
        if not ok:
            raise ValueError(f"Synthetic: {option} must be {expected}, got {value!r}")

    need(num_train_ids >= 1, "num_train_ids", ">= 1", num_train_ids)
    need(num_test_ids >= 1, "num_test_ids", ">= 1", num_test_ids)
    need(num_train_ids + num_test_ids <= 9999, "num_train_ids + num_test_ids", "<= 9999 (4-digit pids)",
         num_train_ids + num_test_ids)
    need(2 <= num_cameras <= 99, "num_cameras", "in 2..99", num_cameras)
    need(isinstance(images_per_id, Sequence) and not isinstance(images_per_id, str) and len(images_per_id) == 2
         and 4 <= images_per_id[0] <= images_per_id[1], "images_per_id", "(min, max) with 4 <= min <= max",
         images_per_id)
    sizes = {"num_train_images": num_train_images, "num_query": num_query, "num_gallery": num_gallery}
    given = [k for k, v in sizes.items() if v is not None]
    need(len(given) in (0, 3), "num_train_images, num_query, num_gallery", "all given or all None", sizes)
    if given:
        need(4 * num_train_ids <= num_train_images <= 999999 * num_train_ids, "num_train_images",
             f">= 4 per training id ({4 * num_train_ids})", num_train_images)
        need(2 * num_test_ids <= num_query <= num_cameras * num_test_ids, "num_query",
             f"2..num_cameras per test id ({2 * num_test_ids}..{num_cameras * num_test_ids})", num_query)
        need(num_query <= num_gallery <= 999999 * num_test_ids, "num_gallery", f">= num_query ({num_query})",
             num_gallery)
    need(0 <= num_distractors <= 999999, "num_distractors", "in 0..999999", num_distractors)
    need(height >= 16, "height", ">= 16", height)
    need(width >= 8, "width", ">= 8", width)
    need(camera_shift >= 0, "camera_shift", ">= 0", camera_shift)
    need(noise >= 0, "noise", ">= 0", noise)
    need(0 <= occlusion <= 1, "occlusion", "in [0, 1]", occlusion)
    need(seed >= 0, "seed", ">= 0", seed)


def _generate_atomically(folder: Path, **params) -> None:
    """Render into a temporary sibling folder, then rename it into place (never a half-written dataset)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        _generate(tmp, **params)
        os.replace(tmp, folder)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (isinstance(exc, OSError) and folder.is_dir()):  # else another process finished it first
            raise


class _Renderer:
    """Renders images of one set into ``out``; every process builds its own from the parameters."""

    def __init__(self, out: Path, *, num_train_ids, num_test_ids, num_cameras, height, width, camera_shift, noise,
                 occlusion, seed, nuisances: Nuisances | None = None, **_) -> None:
        self.out, self.seed, self.height, self.width, self.occlusion = Path(out), seed, height, width, occlusion
        self.num_cameras, self.num_train_ids, self.num_ids = num_cameras, num_train_ids, num_train_ids + num_test_ids
        self.nuisances = n = nuisances or Nuisances()
        site = _scene_colours(_rng(seed, _STREAM_SITE))
        cams = [_make_camera(_rng(seed, _STREAM_CAM, c), site, height, width, camera_shift, noise)
                for c in range(num_cameras)]
        # per camera, its illuminants: slot 0 is the camera's own
        self.slots = [[cam] + [_slot_camera(cam, _rng(seed, _STREAM_SLOT, c, t), n.slot_strength)
                               for t in range(1, n.time_slots)] for c, cam in enumerate(cams)]

    def emit(self, split: str, pid: int, ident: _Identity, cam: int, frame: int, slot: int = 0,
             shot: np.random.Generator | None = None) -> None:
        image = _render(ident, self.slots[cam][slot], _rng(self.seed, _STREAM_IMG, pid, cam, frame), self.height,
                        self.width, self.occlusion, shot=shot, box_jitter=self.nuisances.box_jitter)
        _write_jpeg(image, self.out / split / f"{pid:04d}_c{cam + 1}s1_{frame:06d}_00.jpg")

    def outfits(self, pid: int) -> list[_Identity]:
        """The outfits of identity ``pid``: its own clothes (or a look-alike's), then ``outfits - 1`` others."""
        n = self.nuisances
        ident = _make_identity(_rng(self.seed, _STREAM_ID, pid))
        if n.lookalikes > 0:
            rng = _rng(self.seed, _STREAM_TWIN, pid)
            first, last = (1, self.num_train_ids) if pid <= self.num_train_ids else (self.num_train_ids + 1,
                                                                                     self.num_ids)
            if rng.random() < n.lookalikes and last > first:
                twin = int(rng.integers(first, last))  # another identity of the same split
                twin += twin >= pid
                ident = _dressed_as(ident, _make_identity(_rng(self.seed, _STREAM_ID, twin)))
        return [ident] + [_dressed_as(ident, _make_identity(_rng(self.seed, _STREAM_OUTFIT, pid, o)))
                          for o in range(1, n.outfits)]

    def visits(self, pid: int, images: list[tuple[str, int, int]]) -> list[list[tuple[str, int, int]]]:
        """``images`` (grouped by camera) cut into visits: runs of 1..burst consecutive frames on one camera."""
        burst = self.nuisances.burst
        if burst == 1:
            return [[image] for image in images]
        out = []
        for cam, group in groupby(images, key=lambda image: image[1]):
            group, rng, start = list(group), _rng(self.seed, _STREAM_VISIT, pid, cam), 0
            while start < len(group):
                length = int(rng.integers(1, burst + 1))
                out.append(group[start:start + length])
                start += length
        return out

    def run(self, job: tuple) -> int:
        """Render one job: ``("ids", [(pid, [(split, cam, frame), ...]), ...])`` or ``("distractors", start,
        stop)``; return the number of images written."""
        if job[0] == "ids":
            n = self.nuisances
            for pid, images in job[1]:
                outfits = self.outfits(pid)
                for visit in self.visits(pid, images):
                    _, cam, start = visit[0]
                    choice = _rng(self.seed, _STREAM_VISIT, pid, cam, start, 0)  # the visit's light and clothes
                    slot, outfit = int(choice.integers(n.time_slots)), int(choice.integers(n.outfits))
                    for split, cam, frame in visit:
                        shot = _rng(self.seed, _STREAM_VISIT, pid, cam, start, 1) if n.burst > 1 else None
                        self.emit(split, pid, outfits[outfit], cam, frame, slot, shot)
            return sum(len(images) for _, images in job[1])
        for k in range(job[1], job[2]):
            rng = _rng(self.seed, _STREAM_DISTRACTOR, k)
            ident, cam = _make_identity(rng), int(rng.integers(self.num_cameras))
            self.emit("bounding_box_test", 0, ident, cam, k, int(rng.integers(self.nuisances.time_slots)))
        return job[2] - job[1]


_worker_renderer: _Renderer | None = None  # the renderer of a worker process


def _init_worker(out: str, params: dict) -> None:
    global _worker_renderer
    _worker_renderer = _Renderer(Path(out), **params)


def _run_in_worker(job: tuple) -> int:
    assert _worker_renderer is not None
    return _worker_renderer.run(job)


def _jobs(plan: list, num_distractors: int) -> list[tuple]:
    """The plan cut into jobs of about ``_JOB_IMAGES`` images (whole identities; distractors in ranges)."""
    size = _JOB_IMAGES
    jobs, chunk, n = [], [], 0
    for pid, images in plan:
        chunk.append((pid, images))
        n += len(images)
        if n >= size:
            jobs.append(("ids", chunk))
            chunk, n = [], 0
    if chunk:
        jobs.append(("ids", chunk))
    jobs += [("distractors", k, min(k + size, num_distractors)) for k in range(0, num_distractors, size)]
    return jobs


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _generate(out: Path, *, workers: int | None = None, progress: bool = False, desc: str = "synthetic",
              **params) -> None:
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (out / split).mkdir()
    plan = _plan_set(**params)
    total = sum(len(images) for _, images in plan) + params["num_distractors"]
    jobs = _jobs(plan, params["num_distractors"])
    if workers is None:
        workers = 1 if total < _IN_PROCESS_BELOW else _available_cores()
    workers = max(1, min(workers, len(jobs)))
    log.info("%s: rendering %d images (%d process%s)", desc, total, workers, "" if workers == 1 else "es")
    with tqdm(total=total, desc=f"rendering {desc}", unit="img", disable=not progress, leave=False) as bar:
        if workers == 1:
            renderer = _Renderer(out, **params)
            for job in jobs:
                bar.update(renderer.run(job))
            return
        # fork where the platform has it: a spawned worker would re-import torch (seconds) through the package
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                   initializer=_init_worker, initargs=(str(out), params))
        try:
            for future in as_completed([pool.submit(_run_in_worker, job) for job in jobs]):
                bar.update(future.result())
        finally:  # on an error, drop the jobs not started and wait for the running ones before cleaning up
            pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["SYNTHETIC_SETS", "Nuisances", "Synthetic", "SyntheticHard", "SyntheticMSMT17", "SyntheticMarket"]
