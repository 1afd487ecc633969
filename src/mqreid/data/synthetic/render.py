"""Rendering: one image from an identity, a camera and a random generator; a set's renderer that turns
the plan of an identity into image files."""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .camera import (_Camera, _in_group, _make_background, _make_camera, _make_group, _make_session, _scene_colours,
                     _Session, _slot_camera, _under)
from .nuisances import Nuisances
from .person import (BACKPACK, BAG, BG, HAIR, HAT, LOGO, LOWER, OCCLUDER, SHOES, SKIN, STRAP, UPPER, _draw_person,
                     _dressed_as, _Identity, _make_identity)
from .plan import _camera_groups
from .rand import (_STREAM_CAM, _STREAM_DISTRACTOR, _STREAM_GROUP, _STREAM_HOME, _STREAM_ID, _STREAM_IMG,
                   _STREAM_OUTFIT, _STREAM_POOL, _STREAM_SESSION, _STREAM_SITE, _STREAM_SLOT, _STREAM_TWIN,
                   _STREAM_VISIT, _jitter, _rng)

_JPEG_QUALITY = 90


@dataclass(frozen=True)
class _Lighting:
    """The light of one visit that is not a global colour transform (v2 ``shadows``, ``exposure``,
    ``low_light_noise``)."""

    level: float = 1.0  # multiplies the scene before the camera's tone curve (> 1 clips highlights)
    noise_gain: float = 1.0  # factor on the camera's sensor noise (low light)
    shadow: tuple[int, float, float, float, float] | None = None  # (kind, angle, offset, depth, softness)


def _shadow_mask(shadow: tuple[int, float, float, float, float], h: int, w: int) -> np.ndarray:
    """[h, w] in [0, 1]: where a cast shadow falls. ``kind`` 0: a half-plane (a building's shadow), 1: a
    band of a fifth to a third of the width (a pole's or a tree's); its edge is at ``angle`` (radians),
    ``offset`` from the centre (in half-heights), soft over ``softness`` half-heights."""
    kind, angle, offset, _, softness = shadow
    ys = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xs = np.linspace(-w / h, w / h, w, dtype=np.float32)[None, :]
    along = xs * np.cos(angle) + ys * np.sin(angle) - offset  # signed distance to the edge
    if kind == 1:
        along = 0.15 - np.abs(along)  # a band of half-width 0.15 half-heights
    return np.clip(0.5 + along / (2 * softness), 0, 1)


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
            occlusion: float, shot: np.random.Generator | None = None, box_jitter: float = 1.0,
            lighting: _Lighting | None = None) -> np.ndarray:
    """Render one image: uint8 array [height, width, 3].

    ``lighting``: the visit's cast shadow, light level and low-light noise (None: none of them; it draws
    nothing from the generators, so an image without it keeps its bytes).

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
    if lighting is not None and lighting.shadow is not None:  # person and background alike
        img = img * (1 - lighting.shadow[3] * _shadow_mask(lighting.shadow, h2, w2))[..., None]
    img = 0.25 * (img[0::2, 0::2] + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2])  # 2x2 box filter

    # lighting: per-image brightness and a gradient around the camera's light direction
    gy = np.linspace(-1, 1, height, dtype=np.float32)[:, None]
    gx = np.linspace(-1, 1, width, dtype=np.float32)[None, :]
    ldir = cam.light_dir + rng.normal(0, 0.1, 2)
    img = img * (np.exp(rng.normal(0, 0.12)) * (1 + ldir[0] * gx + ldir[1] * gy))[..., None]
    if lighting is not None and lighting.level != 1.0:
        img = img * np.float32(lighting.level)
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
    noise = cam.noise if lighting is None else cam.noise * lighting.noise_gain
    out = out + frame.normal(0, noise, out.shape) + frame.normal(0, noise, out.shape[:2] + (1,))
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def _write_jpeg(image: np.ndarray, path: Path) -> None:
    """Save a uint8 [H, W, 3] array as a JPEG with fixed settings (byte-reproducible)."""
    Image.fromarray(image).save(path, format="JPEG", quality=_JPEG_QUALITY)


class _Renderer:
    """Renders images of one set into ``out``; every process builds its own from the parameters."""

    def __init__(self, out: Path, *, num_train_ids, num_test_ids, num_cameras, height, width, camera_shift, noise,
                 occlusion, seed, nuisances: Nuisances | None = None, **_) -> None:
        self.out, self.seed, self.height, self.width, self.occlusion = Path(out), seed, height, width, occlusion
        self.num_cameras, self.num_train_ids, self.num_ids = num_cameras, num_train_ids, num_train_ids + num_test_ids
        self.nuisances = n = nuisances or Nuisances()
        self.group_of = _camera_groups(num_cameras, n.groups)
        num_groups = max(self.group_of) + 1
        # each group its own site (group 0 the set's, so that one group is the plain generator's site)
        sites = [_scene_colours(_rng(seed, _STREAM_SITE))] + [_scene_colours(_rng(seed, _STREAM_SITE, g))
                                                               for g in range(1, num_groups)]
        cams = [_make_camera(_rng(seed, _STREAM_CAM, c), sites[self.group_of[c]], height, width, camera_shift, noise)
                for c in range(num_cameras)]
        if n.group_gap > 0:
            groups = [_make_group(_rng(seed, _STREAM_GROUP, g), n.group_gap) for g in range(num_groups)]
            cams = [_in_group(cam, groups[self.group_of[c]], n.group_gap) for c, cam in enumerate(cams)]
        # per camera, its illuminants: slot 0 is the camera's own
        self.slots = [[cam] + [_slot_camera(cam, _rng(seed, _STREAM_SLOT, c, t), n.slot_strength)
                               for t in range(1, n.time_slots)] for c, cam in enumerate(cams)]
        # per group, its sessions' light; and its pool of backgrounds (scene at 2x, colours for occluders)
        self.sessions: list[list[_Session]] = [
            [_make_session(_rng(seed, _STREAM_SESSION, g, s), n.session_strength, n.exposure, n.sessions > 1)
             for s in range(n.sessions)] for g in range(num_groups)] if n.v2 else []
        size = (int(2 * height * 1.25), int(2 * width * 3))  # as a camera's own background
        self.pools = [[_make_background(_rng(seed, _STREAM_POOL, g, b), sites[g], *size)
                       for b in range(n.background_pool)] for g in range(num_groups)]
        self._cameras: dict[tuple[int, int, int, int], _Camera] = {}

    def camera(self, cam: int, slot: int = 0, session: int = -1, background: int = -1) -> _Camera:
        """Camera ``cam`` under illuminant ``slot`` and its group's ``session`` (-1: none), with the group's
        pooled ``background`` (-1: the camera's own)."""
        key = (cam, slot, session, background)
        if key not in self._cameras:
            model, group = self.slots[cam][slot], self.group_of[cam]
            if session >= 0:
                model = _under(model, self.sessions[group][session])
            if background >= 0:
                scene, clutter = self.pools[group][background]
                model = replace(model, background=scene, clutter=clutter)
            self._cameras[key] = model
        return self._cameras[key]

    def emit(self, split: str, pid: int, ident: _Identity, cam: int, frame: int, slot: int = 0,
             shot: np.random.Generator | None = None, session: int = -1, background: int = -1,
             lighting: _Lighting | None = None) -> None:
        image = _render(ident, self.camera(cam, slot, session, background),
                        _rng(self.seed, _STREAM_IMG, pid, cam, frame), self.height, self.width, self.occlusion,
                        shot=shot, box_jitter=self.nuisances.box_jitter, lighting=lighting)
        _write_jpeg(image, self.out / split / f"{pid:04d}_c{cam + 1}s1_{frame:06d}_00.jpg")

    def home_session(self, pid: int) -> int:
        """The session identity ``pid`` is mostly seen in."""
        return int(_rng(self.seed, _STREAM_HOME, pid).integers(self.nuisances.sessions))

    def setting(self, rng: np.random.Generator, cam: int, home: int | None) -> dict:
        """The v2 setting of one visit on camera ``cam``, drawn from ``rng``: its session (the home session with
        probability ``session_stay``; any session when ``home`` is None), its pooled background and its lighting.
        Empty without v2 nuisances."""
        n = self.nuisances
        if not n.v2:
            return {}
        if home is None:
            session = int(rng.integers(n.sessions))
        elif n.sessions > 1 and rng.random() >= n.session_stay:
            session = (home + 1 + int(rng.integers(n.sessions - 1))) % n.sessions
        else:
            session = home
        background = int(rng.integers(n.background_pool)) if n.background_pool else -1
        lighting = None
        if n.lighting:
            light = self.sessions[self.group_of[cam]][session]
            level = light.level * float(np.exp(rng.normal(0, n.exposure / 3)))
            shadow = None
            if rng.random() < n.shadows:
                shadow = (int(rng.integers(2)), light.sun + rng.normal(0, 0.15), float(rng.uniform(-0.8, 0.8)),
                          float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.02, 0.12)))
            lighting = _Lighting(level=level, noise_gain=1 + n.low_light_noise * max(0.0, 1 / level - 1),
                                 shadow=shadow)
        return dict(session=session, background=background, lighting=lighting)

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
                home = self.home_session(pid) if n.v2 else None
                for visit in self.visits(pid, images):
                    _, cam, start = visit[0]
                    choice = _rng(self.seed, _STREAM_VISIT, pid, cam, start, 0)  # the visit's light and clothes
                    slot, outfit = int(choice.integers(n.time_slots)), int(choice.integers(n.outfits))
                    setting = self.setting(_rng(self.seed, _STREAM_VISIT, pid, cam, start, 2), cam, home)
                    for split, cam, frame in visit:
                        shot = _rng(self.seed, _STREAM_VISIT, pid, cam, start, 1) if n.burst > 1 else None
                        self.emit(split, pid, outfits[outfit], cam, frame, slot, shot, **setting)
            return sum(len(images) for _, images in job[1])
        for k in range(job[1], job[2]):
            rng = _rng(self.seed, _STREAM_DISTRACTOR, k)
            ident, cam = _make_identity(rng), int(rng.integers(self.num_cameras))
            setting = self.setting(_rng(self.seed, _STREAM_DISTRACTOR, k, 1), cam, None)
            self.emit("bounding_box_test", 0, ident, cam, k, int(rng.integers(self.nuisances.time_slots)), **setting)
        return job[2] - job[1]

