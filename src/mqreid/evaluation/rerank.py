"""k-reciprocal re-ranking of a query x gallery distance (Zhong et al., CVPR 2017).

Follows the common implementation (``re_ranking(probFea, galFea, k1, k2, lambda_value)``):

- the encoding is computed over all Q + G points with full-length rankings (``R(i, k1)`` uses
  the first ``k1 + 1`` neighbours);
- the original distance is the squared Euclidean distance, divided for each point by its largest
  distance to any of the Q + G points; the weights of the encoding are ``exp(-that)``;
- final = ``(1 - lambda) * jaccard(query, gallery) + lambda * original(query, gallery)``.

Features are L2-normalised first (the project's evaluation uses normalised features), so the
squared distance is ``2 - 2 cos``. The encoding is sparse (memory O((Q + G)·k)) and built once by
:class:`ReRanker`; the re-ranked distances are then produced a block of queries at a time
(:meth:`ReRanker.rows`, [C, G]), so an evaluation that ranks each block as it comes
(:func:`mqreid.evaluation.ranking.evaluate_rows`) never holds Q x G values: at MSMT17 size
(11,659 x 82,161) one float64 Q x G array is 7.7 GB. :func:`re_ranking` assembles the blocks into
the dense [Q, G] matrix for small sets. Each block is computed in float64 and returned as float32.
The original stores ``V`` in float16; this computes in float64, so results differ from it by
float16 rounding (~1e-3).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from mqreid.cluster.jaccard import k_reciprocal_encoding, min_overlap, overlap_to_distance
from mqreid.cluster.knn import as_unit_features, knn_search

__all__ = ["DEFAULT_ROWS", "ReRanker", "re_ranking"]

_ROW_CHUNK = 1 << 24  # similarity entries per chunk when scanning rows for their minimum
DEFAULT_ROWS = 128  # queries per block when re_ranking assembles the dense matrix


def _row_min_similarity(x: torch.Tensor) -> np.ndarray:
    """Smallest cosine similarity of each row of ``x`` [N, D] to all rows, [N] (chunked GEMM). The minima stay
    on ``x``'s device until the end: one copy to the host, not one wait per chunk (~530 at MSMT17's 94k)."""
    step = max(1, _ROW_CHUNK // x.shape[0])
    with torch.no_grad():
        out = torch.cat([(x[s:s + step] @ x.T).amin(dim=1) for s in range(0, x.shape[0], step)])
    return out.cpu().numpy().astype(np.float64)


class ReRanker:
    """Re-ranked distances of queries [Q, D] to a gallery [G, D], a block of queries at a time.

    Building it runs the kNN search over the Q + G points and computes their sparse k-reciprocal
    encoding ``V`` and per-point normalisers (memory O((Q + G)·k) plus the features);
    :meth:`rows` then gives the re-ranked distances of any slice of queries.

    Args:
        q_feats, g_feats: features (torch or numpy, CPU or CUDA); rows are L2-normalised.
        k1: k-reciprocal neighbourhood size; k2: query-expansion size (1 disables it).
        lambda_value: weight of the original distance, in [0, 1].
        knn: kNN backend, ``"auto"``, ``"faiss"`` or ``"torch"``.
    """

    def __init__(
        self,
        q_feats: torch.Tensor | np.ndarray,
        g_feats: torch.Tensor | np.ndarray,
        k1: int = 20,
        k2: int = 6,
        lambda_value: float = 0.3,
        *,
        knn: str = "auto",
    ) -> None:
        for name, value in (("k1", k1), ("k2", k2)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if not 0 <= lambda_value <= 1:
            raise ValueError(f"lambda_value: expected a float in [0, 1], got {lambda_value!r}")
        q = as_unit_features(q_feats, "q_feats")
        g = as_unit_features(g_feats, "g_feats").to(q.device)
        if q.shape[1] != g.shape[1]:
            raise ValueError(f"g_feats: expected dimension {q.shape[1]} like q_feats, got {g.shape[1]}")
        x = torch.cat([q, g])
        n, nq = x.shape[0], q.shape[0]
        length = min(max(k1 + 1, k2), n)
        sims, rank = knn_search(x, length, backend=knn)
        max_dist = np.maximum(2.0 - 2.0 * _row_min_similarity(x), 1e-12)  # per-point normaliser
        v = k_reciprocal_encoding(x, rank, sims, k1, k2, row_scale=max_dist)  # rankings k1 + 1 long
        del x, sims, rank
        self._q, self._g = q, g
        self._lambda = float(lambda_value)
        self._q_scale = max_dist[:nq]
        self._v_query = v[:nq].tocsr()
        # min_overlap reads the gallery rows by column: converted once here, not for every block
        self._v_gallery = sp.csc_matrix(v[nq:])
        self._v_gallery.sort_indices()

    @property
    def shape(self) -> tuple[int, int]:
        """(Q, G): the shape of the full re-ranked distance matrix."""
        return self._q.shape[0], self._g.shape[0]

    def rows(self, rows: slice) -> np.ndarray:
        """Re-ranked distances [C, G] float32 of the queries ``rows`` (a slice of 0..Q-1) to the gallery.

        Computed in float64: the Jaccard distance of the block's rows of ``V`` against the gallery's
        (1 where they share no column), and the block's squared distances (one GEMM) over the
        queries' normalisers. Memory is O(C x G) on top of the encoding.
        """
        if not isinstance(rows, slice):
            raise TypeError(f"rows: expected a slice of query indices, got {type(rows).__name__}")
        q, scale = self._q[rows], self._q_scale[rows]
        jac = np.ones((q.shape[0], self._g.shape[0]))
        m = min_overlap(self._v_query[rows], self._v_gallery).tocoo()
        jac[m.row, m.col] = overlap_to_distance(m.data)
        del m
        with torch.no_grad():
            original = (2.0 - 2.0 * (q @ self._g.T)).clamp_min(0).cpu().numpy().astype(np.float64)
        original /= scale[:, None]
        jac *= 1 - self._lambda
        original *= self._lambda
        jac += original
        return jac.astype(np.float32)


def re_ranking(
    q_feats: torch.Tensor | np.ndarray,
    g_feats: torch.Tensor | np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    knn: str = "auto",
) -> np.ndarray:
    """Re-ranked distance [Q, G] float32 between query features [Q, D] and gallery [G, D].

    The dense matrix, assembled from :meth:`ReRanker.rows` blocks of ``DEFAULT_ROWS`` queries
    (memory: the float32 answer plus one block). For large sets, rank the blocks as they come
    instead: ``evaluate_rows(ReRanker(...).rows, ...)`` in :mod:`mqreid.evaluation.ranking`.
    Arguments as in :class:`ReRanker`.
    """
    reranker = ReRanker(q_feats, g_feats, k1, k2, lambda_value, knn=knn)
    num_q, num_g = reranker.shape
    out = np.empty((num_q, num_g), np.float32)
    for start in range(0, num_q, DEFAULT_ROWS):
        out[start:start + DEFAULT_ROWS] = reranker.rows(slice(start, start + DEFAULT_ROWS))
    return out
