"""Two-level directed Infomap on a cosine kNN graph (the InfoMap clusterer of Cluster Contrast)."""

from __future__ import annotations

import logging
import time
import warnings

import infomap
import numpy as np

from mqreid.cluster.jaccard import format_steps
from mqreid.cluster.knn import check_params, device_type, knn_search, resolve_backend
from mqreid.cluster.labels import cluster_summary, relabel_contiguous
from mqreid.utils.errors import SettingError

log = logging.getLogger(__name__)

try:  # the warning class of get_modules()'s deprecation, a DeprecationWarning subclass
    from infomap._options import LegacySurfaceWarning as _LEGACY_WARNING
except ImportError:  # releases without the class
    _LEGACY_WARNING = DeprecationWarning
_GET_MODULES_DEPRECATED = r"Infomap\.get_modules is deprecated"


class InfomapClusterer:
    """Infomap on directed links i -> j (weight = cosine similarity) to each of the ``k`` nearest
    neighbours j != i with similarity >= ``min_sim``.

    Args:
        k: neighbours per point, self excluded (original ``--k1 15``, which counts the point itself: 14).
        min_sim: smallest similarity that makes a link (original ``--eps 0.5``).
        min_cluster_size: smaller modules become outliers (original ``--k2 4``: sizes <= 4 are
            outliers, i.e. 5).
        knn: kNN backend, ``"auto"``, ``"torch"``, ``"faiss"`` or ``"approx"`` (see :mod:`mqreid.cluster.knn`).
        seed: random seed >= 0 (passed to Infomap as ``seed + 1``; its seeds start at 1).
            Results are deterministic for a seed.

    Points without an outgoing link are outliers. ``labels_`` [N] int64: 0..C-1, -1 = outlier.
    """

    def __init__(self, k: int = 14, min_sim: float = 0.5, min_cluster_size: int = 5, knn: str = "auto",
                 seed: int = 0):
        self.k = k
        self.min_sim = min_sim
        self.min_cluster_size = min_cluster_size
        self.knn = knn
        self.seed = seed

    def _validate(self) -> None:
        check_params(self, ("k", "min_cluster_size"))
        if not isinstance(self.min_sim, (int, float, np.floating)) or not -1 <= self.min_sim <= 1:
            raise SettingError("min_sim", self.min_sim, "a cosine similarity in [-1, 1]")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise SettingError("seed", self.seed, "an integer >= 0")

    def fit(self, features) -> InfomapClusterer:
        """Cluster ``features`` [N, D] (L2-normalised; torch or numpy, CPU or CUDA)."""
        self._validate()
        start = time.perf_counter()
        shape = tuple(getattr(features, "shape", ()))
        choice = resolve_backend(self.knn, shape[0] if shape else 0, shape[1] if len(shape) == 2 else 0,
                                 device_type(features))
        sims, idx = knn_search(features, self.k, backend=choice, exclude_self=True)
        steps = [("kNN", time.perf_counter() - start, choice.device)]
        t0 = time.perf_counter()
        n = len(idx)
        src = np.repeat(np.arange(n), idx.shape[1])
        keep = sims.ravel() >= self.min_sim
        src, dst, w = src[keep], idx.ravel()[keep], sims.ravel()[keep].astype(np.float64)
        labels = np.full(n, -1, np.int64)
        if len(src):
            im = infomap.Infomap(two_level=True, directed=True, silent=True, seed=int(self.seed) + 1)  # Infomap seeds start at 1
            im.add_links(zip(src.tolist(), dst.tolist(), w.tolist()))
            im.run()
            with warnings.catch_warnings():
                # Result.modules() iterates a SWIG vector, which segfaults once faiss (another
                # SWIG module) is imported; the older get_modules() returns a plain dict. Recent
                # releases mark it deprecated (LegacySurfaceWarning): that warning alone is silenced.
                warnings.filterwarnings("ignore", message=_GET_MODULES_DEPRECATED, category=_LEGACY_WARNING)
                modules = im.get_modules()
            for node, module in modules.items():
                labels[node] = module
        has_link = np.bincount(src, minlength=n) > 0
        labels[~has_link] = -1
        self.labels_ = relabel_contiguous(labels, self.min_cluster_size)
        steps.append(("Infomap", time.perf_counter() - t0, "cpu"))  # the infomap package runs on the host
        clusters, outliers = cluster_summary(self.labels_)
        log.info("Infomap: %d clusters, %.1f%% outliers; N=%d, %d links; %s; total %.2f s", clusters,
                 100 * outliers, n, len(src), format_steps(steps), time.perf_counter() - start)
        return self

    def fit_predict(self, features, y=None) -> np.ndarray:
        """Labels [N] int64 of ``features`` [N, D]: 0..C-1, -1 = outlier."""
        return self.fit(features).labels_
