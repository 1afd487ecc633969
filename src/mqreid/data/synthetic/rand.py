"""Random streams of the generator: every draw comes from a generator keyed by (seed, stream, ...), so an
image's bytes do not depend on the order or the process that renders it."""

from __future__ import annotations

import numpy as np

(_STREAM_PLAN, _STREAM_ID, _STREAM_CAM, _STREAM_IMG, _STREAM_DISTRACTOR, _STREAM_SITE, _STREAM_COUNTS,
 _STREAM_SLOT, _STREAM_OUTFIT, _STREAM_TWIN, _STREAM_VISIT) = range(11)
# the v2 nuisances' streams (new numbers only: the streams above keep theirs, so v1 sets keep their bytes)
_STREAM_GROUP, _STREAM_SESSION, _STREAM_HOME, _STREAM_POOL = range(11, 15)


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


def _jitter(rng: np.random.Generator, colour: np.ndarray, std: float = 0.08) -> np.ndarray:
    return np.clip(colour * np.exp(rng.normal(0, std, 3)), 0, 1)

