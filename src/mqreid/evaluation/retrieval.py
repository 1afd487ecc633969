"""One evaluation path: query/gallery features -> distances -> mAP and CMC (plain, and re-ranked on request)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .ranking import evaluate_features, evaluate_rows, summarise_percent
from .rerank import ReRanker


def _row(result: dict[str, Any]) -> dict[str, float]:
    return {**summarise_percent(result), "num_valid_queries": int(result["num_valid_queries"])}


def evaluate_retrieval(
    query_features: torch.Tensor,
    gallery_features: torch.Tensor,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_camids: np.ndarray,
    gallery_camids: np.ndarray,
    *,
    metric: str = "euclidean",
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    device: torch.device | str = "cpu",
) -> dict[str, dict[str, float]]:
    """Market-1501-protocol evaluation of query features [Q, D] against gallery features [G, D].

    Returns ``{"plain": row}`` and, with ``rerank=True``, also ``{"re-ranked": row}`` (k-reciprocal
    re-ranking with ``k1``, ``k2``, ``lambda_value``); a row holds mAP, rank1, rank5, rank10 in percent and
    num_valid_queries. Both distances are computed chunk by chunk of queries and ranked as they come (never
    Q x G at once): the plain ones on ``device``; the re-ranked ones from a sparse encoding of all Q + G
    features (memory O((Q + G)·k)), ranked on the CPU.
    """
    device = torch.device(device)
    ids = (query_pids, gallery_pids, query_camids, gallery_camids)
    rows = {"plain": _row(evaluate_features(query_features.to(device), gallery_features.to(device), *ids,
                                            metric=metric))}
    if rerank:
        reranker = ReRanker(query_features, gallery_features, k1=k1, k2=k2, lambda_value=lambda_value)
        rows["re-ranked"] = _row(evaluate_rows(reranker.rows, reranker.shape, *ids))
    return rows
