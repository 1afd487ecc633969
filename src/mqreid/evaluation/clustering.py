"""Quality of pseudo labels against the true training identities."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix


def pseudo_label_quality(true_ids, labels) -> dict[str, float]:
    """ARI, NMI and purity of the clustered samples, plus the outlier ratio.

    ``true_ids`` and ``labels`` are [N] integer arrays; ``labels == -1`` marks outliers, which are left out
    of ARI/NMI/purity (their share is reported as ``outlier_ratio``). Purity is the fraction of clustered
    samples that belong to their cluster's majority identity.
    """
    true_ids, labels = np.asarray(true_ids), np.asarray(labels)
    if true_ids.shape != labels.shape:
        raise ValueError(f"true_ids {true_ids.shape} and labels {labels.shape} must have the same shape")
    keep = labels >= 0
    out = {"outlier_ratio": float(1.0 - keep.mean()) if labels.size else 0.0}
    if keep.sum() == 0:
        return {**out, "ari": 0.0, "nmi": 0.0, "purity": 0.0}
    t, p = true_ids[keep], labels[keep]
    cont = contingency_matrix(p, t, sparse=True)
    return {**out, "ari": float(adjusted_rand_score(t, p)), "nmi": float(normalized_mutual_info_score(t, p)),
            "purity": float(cont.max(axis=1).sum() / keep.sum())}
