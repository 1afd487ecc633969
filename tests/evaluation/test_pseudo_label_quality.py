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


def test_camera_statistics_count_splits_and_single_camera_clusters():
    from mqreid.evaluation import camera_statistics

    ids = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    cams = np.array([0, 0, 1, 1, 0, 1, 1, 2])
    labels = np.array([0, 0, 1, 1, 2, 2, -1, -1])  # id 0 split by camera into clusters 0 and 1; id 2 an outlier
    stats = camera_statistics(ids, cams, labels)
    assert stats["clusters_per_id"] == 1.5  # id 0: 2 clusters, id 1: 1 cluster
    assert stats["single_camera_clusters"] == pytest.approx(2 / 3)  # clusters 0 and 1 of 0, 1, 2
    assert camera_statistics(ids, cams, np.full(8, -1)) == {"clusters_per_id": 0.0, "single_camera_clusters": 0.0}
    with pytest.raises(ValueError, match="same shape"):
        camera_statistics(ids, cams[:3], labels)


def test_same_camera_neighbours_share():
    import torch

    from mqreid.evaluation import same_camera_neighbours

    # two tight groups, each from one camera: every neighbour is from the image's own camera
    x = torch.tensor([[1.0, 0.01], [1.0, 0.02], [1.0, 0.03], [0.01, 1.0], [0.02, 1.0], [0.03, 1.0]])
    assert same_camera_neighbours(x, [0, 0, 0, 1, 1, 1], k=2) == 1.0
    assert same_camera_neighbours(x, [0, 1, 0, 1, 0, 1], k=2) == pytest.approx(1 / 3)  # 1 of 2 for the middles
    with pytest.raises(ValueError, match="at least 2 images"):
        same_camera_neighbours(x[:1], [0], k=15)
