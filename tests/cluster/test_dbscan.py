"""DBSCAN on the sparse Jaccard graph equals DBSCAN on the dense matrix."""

import logging

import numpy as np
import pytest
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from mqreid.cluster import DBSCANClusterer, dbscan_eps_sweep, jaccard_distance


def blobs(n=150, d=16, centres=6, noise=0.35, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    y = rng.integers(0, centres, n)
    x = c[y] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def dense(graph):
    d = np.ones(graph.shape)
    coo = graph.tocoo()
    d[coo.row, coo.col] = coo.data
    return d


@pytest.mark.parametrize("eps", [0.3, 0.5, 0.6, 0.8])
def test_labels_equal_dense_dbscan(eps):
    x, _ = blobs()
    est = DBSCANClusterer(eps=eps, min_samples=4, k1=20, k2=6, knn="torch")
    labels = est.fit_predict(x)
    ref = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(dense(est.graph_))
    assert labels.dtype == np.int64
    assert np.array_equal(labels, ref)


def test_recovers_blobs_and_logs(caplog):
    x, y = blobs(noise=0.2)
    with caplog.at_level(logging.INFO, logger="mqreid.cluster.dbscan"):
        labels = DBSCANClusterer(eps=0.6, k1=20).fit_predict(x)
    assert set(labels) == set(range(6))
    assert adjusted_rand_score(y, labels) == 1  # the six blobs exactly, no outlier
    assert "clusters" in caplog.text and "outliers" in caplog.text


def test_sweep_equals_separate_fits():
    x, y = blobs(noise=0.5, seed=1)
    est = DBSCANClusterer(min_samples=4, k1=20)
    graph = jaccard_distance(x, 20, 6)
    sweep = est.sweep_eps(x, [0.4, 0.6], true_labels=y)
    assert [r["eps"] for r in sweep] == [0.4, 0.6]
    for row in sweep:  # plain dicts of plain values, each with its own labels array
        assert type(row) is dict and set(row) == {"eps", "num_clusters", "outlier_ratio", "labels", "ari", "nmi"}
        assert all(type(row[k]) is float for k in ("eps", "outlier_ratio", "ari", "nmi"))
        assert type(row["num_clusters"]) is int
        assert row["labels"].dtype == np.int64 and row["labels"].shape == (150,)
    assert not np.shares_memory(sweep[0]["labels"], sweep[1]["labels"])
    for row in sweep:
        fit = DBSCANClusterer(eps=row["eps"], min_samples=4, k1=20).fit_graph(graph).labels_
        assert np.array_equal(row["labels"], fit)
        assert row["num_clusters"] == fit.max() + 1
        assert row["outlier_ratio"] == pytest.approx(np.mean(fit == -1))
        assert 0 <= row["ari"] <= 1 and 0 <= row["nmi"] <= 1
    again = dbscan_eps_sweep(graph, [0.4], 4)
    assert np.array_equal(again[0]["labels"], sweep[0]["labels"]) and "ari" not in again[0]


def test_parameter_validation_in_fit():
    x, _ = blobs(n=20)
    est = DBSCANClusterer(eps=1.5)
    assert est.eps == 1.5  # stored unchanged, checked in fit
    with pytest.raises(ValueError, match="eps"):
        est.fit(x)
    with pytest.raises(ValueError, match="min_samples"):
        DBSCANClusterer(min_samples=0).fit(x)
    with pytest.raises(ValueError, match="knn"):
        DBSCANClusterer(knn="gpu").fit(x)
    with pytest.raises(ValueError, match="features"):
        DBSCANClusterer().fit(np.full((10, 4), np.nan))
    with pytest.raises(ValueError, match="graph"):
        DBSCANClusterer().fit_graph(np.zeros((3, 3)))


def test_degenerate_inputs():
    x, _ = blobs(n=12)
    labels = DBSCANClusterer(k1=30, min_samples=4).fit_predict(x)  # N < k1
    assert labels.shape == (12,) and labels.min() >= -1
    same = np.ones((10, 4), np.float32)  # all identical: one cluster
    assert np.array_equal(DBSCANClusterer(k1=5).fit_predict(same), np.zeros(10, np.int64))
    # everything an outlier: more samples required than points
    assert np.all(DBSCANClusterer(min_samples=50, k1=10).fit_predict(blobs(n=30)[0]) == -1)
    # a single tight cluster
    tight = blobs(n=40, centres=1, noise=0.05)[0]
    assert np.all(DBSCANClusterer(k1=10).fit_predict(tight) == 0)
