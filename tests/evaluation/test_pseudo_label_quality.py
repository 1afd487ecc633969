import numpy as np
import pytest

from mqreid.evaluation import pseudo_label_quality


def test_hand_computed_purity_and_outliers():
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 1, -1, 2, 2])
    q = pseudo_label_quality(true, pred)
    # clustered: 7 of 8; cluster 0 = {0,0} pure, cluster 1 = {0,1,1} majority 2, cluster 2 = {2,2} pure
    assert q["outlier_ratio"] == pytest.approx(1 / 8)
    assert q["purity"] == pytest.approx((2 + 2 + 2) / 7)
    assert 0 < q["ari"] < 1 and 0 < q["nmi"] < 1


def test_perfect_and_degenerate_clusterings():
    true = np.array([3, 3, 5, 5, 7])
    assert pseudo_label_quality(true, np.array([1, 1, 0, 0, 2])) == {
        "outlier_ratio": 0.0, "ari": 1.0, "nmi": 1.0, "purity": 1.0}
    assert pseudo_label_quality(true, np.full(5, -1))["outlier_ratio"] == 1.0
    with pytest.raises(ValueError, match="same shape"):
        pseudo_label_quality(true, np.zeros(4))
