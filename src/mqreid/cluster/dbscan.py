"""DBSCAN on the sparse k-reciprocal Jaccard graph (the Cluster Contrast / SpCL clusterer)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from mqreid.cluster.camera_jaccard import K1_INTER, K1_INTRA, K2_FIRST, K2_INTER, K2_INTRA, check_camera_params
from mqreid.cluster.jaccard import format_steps, jaccard_distance, jaccard_distance_with_steps
from mqreid.cluster.knn import check_params
from mqreid.cluster.labels import cluster_summary
from mqreid.utils.errors import SettingError

log = logging.getLogger(__name__)


def _check_eps(eps: float) -> float:
    # absent graph entries mean distance 1, so only eps < 1 gives the dense matrix's neighbourhoods
    if not isinstance(eps, (int, float, np.floating)) or not 0 < eps < 1:
        raise SettingError("eps", eps, "a float in (0, 1) for a Jaccard graph")
    return float(eps)


def _check_graph(graph) -> sp.csr_matrix:
    if not sp.issparse(graph) or graph.ndim != 2 or graph.shape[0] != graph.shape[1]:
        raise ValueError(f"graph: expected a square scipy.sparse distance matrix, got {type(graph).__name__}")
    return sp.csr_matrix(graph)


def dbscan_on_graph(graph: sp.csr_matrix, eps: float, min_samples: int) -> np.ndarray:
    """scikit-learn DBSCAN on a precomputed sparse distance ``graph`` [N, N]; labels [N] int64.

    Stored entries are distances; absent ones are "not a neighbour", which equals a dense
    matrix filled with 1 for every ``eps < 1``. scikit-learn always counts a point as its own
    neighbour on sparse input (the graph also stores 0 on its diagonal).
    """
    # Only pairs within eps are neighbours: drop the others, then sort each row by distance as
    # scikit-learn wants (it would otherwise sort row by row in Python).
    rows = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    near = graph.data <= eps
    rows, dist, cols = rows[near], graph.data[near], graph.indices[near]
    order = np.lexsort((dist, rows))  # stable: equal distances keep the column order
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=graph.shape[0]))])
    graph = sp.csr_matrix((dist[order], cols[order], indptr), shape=graph.shape)
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph).astype(np.int64)


class DBSCANClusterer:
    """DBSCAN with the k-reciprocal Jaccard distance (scikit-learn estimator shape).

    Args:
        eps: neighbourhood radius on the Jaccard distance, in (0, 1) (original ``--eps``, 0.6).
        min_samples: points within ``eps`` (itself included) that make a core point.
        k1, k2: Jaccard reciprocal-set and query-expansion sizes (original ``--k1 30 --k2 6``).
        knn: kNN backend, ``"auto"``, ``"torch"``, ``"faiss"`` or ``"approx"`` (see
            :mod:`mqreid.cluster.knn`).
        camera_aware: cluster the camera-aware Jaccard distance (CA-Jaccard, see
            :mod:`mqreid.cluster.camera_jaccard`); :meth:`fit` then needs the camera of each row, and
            ``k1``/``k2`` give way to ``k1_intra``, ``k1_inter``, ``k2_intra``, ``k2_inter``.
        k2_intra_first, k2_inter_first: the query expansion of the first clustering (``fit(...,
            first=True)``; the authors use 3 + 3 at epoch 0); equal to ``k2_intra``, ``k2_inter``: none apart.

    After :meth:`fit` (features) or :meth:`fit_graph` (a precomputed Jaccard graph from
    :func:`mqreid.cluster.jaccard_distance`), ``labels_`` [N] int64 holds 0..C-1, -1 = outlier,
    and ``graph_`` the Jaccard graph used (after :meth:`fit`, only its pairs within ``eps``).
    """

    def __init__(self, eps: float = 0.6, min_samples: int = 4, k1: int = 30, k2: int = 6, knn: str = "auto",
                 camera_aware: bool = False, k1_intra: int = K1_INTRA, k1_inter: int = K1_INTER,
                 k2_intra: int = K2_INTRA, k2_inter: int = K2_INTER, k2_intra_first: int = K2_FIRST,
                 k2_inter_first: int = K2_FIRST):
        self.eps = eps
        self.min_samples = min_samples
        self.k1 = k1
        self.k2 = k2
        self.knn = knn
        self.camera_aware = camera_aware
        self.k1_intra, self.k1_inter = k1_intra, k1_inter
        self.k2_intra, self.k2_inter = k2_intra, k2_inter
        self.k2_intra_first, self.k2_inter_first = k2_intra_first, k2_inter_first

    def _validate(self) -> None:
        _check_eps(self.eps)
        check_params(self, ("min_samples", "k1", "k2"))
        if not isinstance(self.camera_aware, bool):
            raise SettingError("camera_aware", self.camera_aware, "true or false")
        check_camera_params(k1_intra=self.k1_intra, k1_inter=self.k1_inter, k2_intra=self.k2_intra,
                            k2_inter=self.k2_inter, k2_intra_first=self.k2_intra_first,
                            k2_inter_first=self.k2_inter_first)

    def camera_params(self, first: bool = False) -> dict[str, int]:
        """The CA-Jaccard settings of a clustering (``first``: the first one's query expansion)."""
        k2 = (self.k2_intra_first, self.k2_inter_first) if first else (self.k2_intra, self.k2_inter)
        return dict(k1_intra=self.k1_intra, k1_inter=self.k1_inter, k2_intra=k2[0], k2_inter=k2[1])

    def fit(self, features, cameras=None, first: bool = False) -> DBSCANClusterer:
        """Cluster ``features`` [N, D] (L2-normalised; torch or numpy, CPU or CUDA). With ``camera_aware``,
        ``cameras`` [N] (integer camera ids) is required and ``first`` marks the run's first clustering;
        otherwise both are ignored."""
        self._validate()
        start = time.perf_counter()
        if self.camera_aware and cameras is None:
            raise ValueError("camera_aware=true: expected camera ids (fit(features, cameras)); set "
                             "camera_aware=false for data without them")
        cameras = cameras if self.camera_aware else None
        graph, steps = jaccard_distance_with_steps(features, self.k1, self.k2, self.knn, self.eps, cameras,
                                                   self.camera_params(first))
        return self._fit(graph, start, steps)

    def fit_graph(self, graph: sp.spmatrix) -> DBSCANClusterer:
        """Cluster a precomputed sparse Jaccard ``graph`` [N, N] (absent entries = distance 1)."""
        self._validate()
        return self._fit(_check_graph(graph), time.perf_counter())

    def _fit(self, graph: sp.csr_matrix, start: float, steps=()) -> DBSCANClusterer:
        self.graph_ = graph
        t0 = time.perf_counter()
        self.labels_ = dbscan_on_graph(graph, self.eps, self.min_samples)
        steps = [*steps, ("DBSCAN", time.perf_counter() - t0, "cpu")]  # scikit-learn, on the host
        clusters, outliers = cluster_summary(self.labels_)
        log.info("DBSCAN eps=%.3f: %d clusters, %.1f%% outliers; N=%d, %d graph pairs; %s; total %.2f s",
                 self.eps, clusters, 100 * outliers, graph.shape[0], graph.nnz, format_steps(steps),
                 time.perf_counter() - start)
        return self

    def fit_predict(self, features, y=None, cameras=None, first: bool = False) -> np.ndarray:
        """Labels [N] int64 of ``features`` [N, D]: 0..C-1, -1 = outlier (``cameras``, ``first``: see
        :meth:`fit`)."""
        return self.fit(features, cameras, first).labels_

    def sweep_eps(self, features_or_graph, eps_values: Sequence[float], true_labels=None,
                  cameras=None) -> list[dict]:
        """DBSCAN for several ``eps`` on one Jaccard graph (computed once from features; camera-aware with
        ``camera_aware`` and ``cameras``).

        Returns one dict per eps: ``eps``, ``num_clusters``, ``outlier_ratio``, ``labels``, and with
        ``true_labels`` [N] also ``ari`` and ``nmi`` (outliers count as one extra group).
        """
        self._validate()
        if sp.issparse(features_or_graph):
            graph = _check_graph(features_or_graph)
        else:
            if self.camera_aware and cameras is None:
                raise ValueError("camera_aware=true: expected camera ids (sweep_eps(..., cameras=...))")
            graph = jaccard_distance(features_or_graph, self.k1, self.k2, knn=self.knn,
                                     cameras=cameras if self.camera_aware else None, **self.camera_params())
        return dbscan_eps_sweep(graph, eps_values, self.min_samples, true_labels)


def dbscan_eps_sweep(graph: sp.spmatrix, eps_values: Sequence[float], min_samples: int = 4,
                     true_labels=None) -> list[dict]:
    """DBSCAN on one precomputed Jaccard ``graph`` [N, N] for every eps; see ``sweep_eps``."""
    graph = _check_graph(graph)
    if true_labels is not None:
        true_labels = np.asarray(true_labels)
        if true_labels.shape != (graph.shape[0],):
            raise ValueError(f"true_labels: expected shape ({graph.shape[0]},), got {true_labels.shape}")
    results = []
    for eps in eps_values:
        start = time.perf_counter()
        labels = dbscan_on_graph(graph, _check_eps(eps), min_samples)
        clusters, outliers = cluster_summary(labels)
        row = {"eps": float(eps), "num_clusters": clusters, "outlier_ratio": outliers, "labels": labels}
        if true_labels is not None:
            row["ari"] = float(adjusted_rand_score(true_labels, labels))
            row["nmi"] = float(normalized_mutual_info_score(true_labels, labels))
        log.info("eps=%.3f: %d clusters, %.1f%% outliers, %.2fs",
                 eps, clusters, 100 * outliers, time.perf_counter() - start)
        results.append(row)
    return results
