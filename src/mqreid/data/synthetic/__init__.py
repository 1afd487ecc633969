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

Modules: ``person`` (an identity's appearance and its drawing), ``camera`` (sites, colour models, optics,
backgrounds, illuminants), ``nuisances`` (the optional nuisances, off by default), ``plan`` (which images
exist, on which cameras, in which split), ``render`` (one image; a set's renderer), ``builder`` (the dataset
classes and the generation of a set into its folder), ``rand`` (the random streams).
"""

from __future__ import annotations

from .builder import (SYNTHETIC_SETS, Synthetic, SyntheticHard, SyntheticMarket, SyntheticMSMT17, SyntheticV2,
                      SyntheticV2Hard)
from .nuisances import Nuisances

__all__ = ["SYNTHETIC_SETS", "Nuisances", "Synthetic", "SyntheticHard", "SyntheticMSMT17", "SyntheticMarket",
           "SyntheticV2", "SyntheticV2Hard"]
