"""The camera model: a site's scene and colours, each camera's colour model, optics, viewpoints and
background, and the illuminants that change a camera's colour model."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from .rand import _jitter


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



@dataclass(frozen=True)
class _Group:
    """What the cameras of one group share beyond their site (v2 ``group_gap``)."""

    light: np.ndarray  # [3, 3] the group's light spectrum (a colour model on column RGB vectors)
    sensor: float  # factor on noise and blur, and on the resolution loss
    view_p: np.ndarray  # [3] the group's viewpoint prior
    scale: float  # factor on the person scale


def _make_group(rng: np.random.Generator, gap: float) -> _Group:
    view_p = 0.85 * rng.dirichlet([1.0, 1.0, 1.0]) + 0.05
    return _Group(light=_colour_model(np.exp(rng.normal(0, 0.2 * gap, 3)), rng.uniform(-0.4, 0.4) * gap,
                                      np.exp(rng.normal(0, 0.25 * gap))),
                  sensor=float(np.exp(rng.normal(0, 0.5 * gap))), view_p=view_p / view_p.sum(),
                  scale=float(np.exp(rng.normal(0, 0.08 * gap))))


def _in_group(cam: _Camera, group: _Group, gap: float) -> _Camera:
    """``cam`` with its group's light spectrum, sensor, viewpoint prior and person scale folded in."""
    weight = 0.7 * min(1.0, gap)
    view_p = (1 - weight) * cam.view_p + weight * group.view_p
    return replace(cam, colour_matrix=(group.light.T @ cam.colour_matrix).astype(np.float32),
                   noise=cam.noise * group.sensor, blur=cam.blur * group.sensor,
                   resolution=float(np.clip(1 - (1 - cam.resolution) * group.sensor, 0.25, 1)),
                   view_p=view_p / view_p.sum(), scale=float(np.clip(cam.scale * group.scale, 0.6, 0.97)))


@dataclass(frozen=True)
class _Session:
    """A session's light, shared by all cameras of a group (v2 ``sessions``, ``exposure``, ``shadows``)."""

    light: np.ndarray | None  # [3, 3] colour model on column RGB vectors; None: the cameras' own light
    light_shift: np.ndarray  # [2] added to each camera's lighting gradient
    level: float  # light level (1: as the camera model; > 1 clips highlights, < 1 darkens)
    sun: float  # direction of cast shadows, radians


def _make_session(rng: np.random.Generator, strength: float, exposure: float, coloured: bool) -> _Session:
    """``coloured``: whether the session changes the colour of the light (only with several sessions)."""
    gains = np.exp(rng.normal(0, 0.15 * strength, 3)) * np.exp(rng.normal(0, 0.2 * strength))
    theta = rng.uniform(-0.35, 0.35) * strength
    shift = rng.normal(0, 0.25 * strength, 2)
    level = float(np.exp(rng.normal(0, exposure)))
    return _Session(light=_colour_model(gains, theta) if coloured else None,
                    light_shift=shift if coloured else np.zeros(2), level=level, sun=float(rng.uniform(0, 2 * np.pi)))


def _under(cam: _Camera, session: _Session) -> _Camera:
    """``cam`` under a session's light (its colour and gradient; the level and shadows act per image)."""
    if session.light is None:
        return cam
    return replace(cam, colour_matrix=(session.light.T @ cam.colour_matrix).astype(np.float32),
                   light_dir=cam.light_dir + session.light_shift)
