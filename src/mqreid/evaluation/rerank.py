"""k-reciprocal re-ranking of a query x gallery distance (Zhong et al., CVPR 2017).

Follows the common implementation (``re_ranking(probFea, galFea, k1, k2, lambda_value)``):

- the encoding is computed over all Q + G points with full-length rankings (``R(i, k1)`` uses
  the first ``k1 + 1`` neighbours);
- the original distance is the squared Euclidean distance, divided for each point by its largest
  distance to any of the Q + G points; the weights of the encoding are ``exp(-that)``;
- final = ``(1 - lambda) * jaccard(query, gallery) + lambda * original(query, gallery)``.

Features are L2-normalised first (the project's evaluation uses normalised features), so the
squared distance is ``2 - 2 cos``. The encoding is sparse (memory O((Q + G)·k)); only the
Q x G answer and its per-row maxima are dense. The original stores ``V`` in float16; this
computes in float64, so results differ from it by float16 rounding (~1e-3).
"""

from __future__ import annotations

import numpy as np
import torch

from mqreid.cluster.jaccard import k_reciprocal_encoding, min_overlap, overlap_to_distance
from mqreid.cluster.knn import as_unit_features, knn_search

_ROW_CHUNK = 1 << 24  # similarity entries per chunk when scanning rows for their minimum


def _row_min_similarity(x: torch.Tensor) -> np.ndarray:
    """Smallest cosine similarity of each row of ``x`` [N, D] to all rows, [N] (chunked GEMM)."""
    step = max(1, _ROW_CHUNK // x.shape[0])
    out = []
    with torch.no_grad():
        for s in range(0, x.shape[0], step):
            out.append((x[s:s + step] @ x.T).min(dim=1).values.cpu().numpy())
    return np.concatenate(out).astype(np.float64)


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

    Args:
        q_feats, g_feats: features (torch or numpy, CPU or CUDA); rows are L2-normalised.
        k1: k-reciprocal neighbourhood size; k2: query-expansion size (1 disables it).
        lambda_value: weight of the original distance, in [0, 1].
        knn: kNN backend, ``"auto"``, ``"faiss"`` or ``"torch"``.
    """
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
    jac = np.ones((nq, n - nq))
    m = min_overlap(v[:nq], v[nq:]).tocoo()
    jac[m.row, m.col] = overlap_to_distance(m.data)
    with torch.no_grad():
        original = (2.0 - 2.0 * (q @ g.T)).clamp_min(0).cpu().numpy().astype(np.float64)
    original /= max_dist[:nq, None]
    return ((1 - lambda_value) * jac + lambda_value * original).astype(np.float32)
