"""knn="approx" (faiss k-means cells) against the exact path, auto switching, faiss being optional,
and the lean (pairs within eps) Jaccard graph that DBSCAN gets."""

import logging

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import mqreid.cluster.knn as knn_module
from mqreid.cluster import (
    DBSCANClusterer,
    InfomapClusterer,
    jaccard_distance,
    knn_search,
)
from mqreid.cluster.dbscan import dbscan_on_graph
from mqreid.cluster.knn import resolve_backend


def clustered(n=3000, d=64, ids=100, noise=0.5, seed=0):
    """~30 points per identity around unit centres, like the bench's synthetic features."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, ids, n)
    x = centres[y] + noise / np.sqrt(d) * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def recall(approx_idx, exact_idx):
    return np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx_idx, exact_idx)])


def test_approx_recall_and_exact_similarities():
    pytest.importorskip("faiss")
    x, _ = clustered()
    sims, idx = knn_search(x, 30, backend="approx")
    _, exact_idx = knn_search(x, 30, backend="torch")
    assert idx.shape == (3000, 30) and sims.dtype == np.float32
    assert recall(idx, exact_idx) >= 0.99
    assert np.array_equal(idx[:, 0], np.arange(3000))  # self first
    assert np.all(np.diff(sims, axis=1) <= 0)
    assert np.allclose(sims, np.einsum("ij,ikj->ik", x, x[idx]), atol=1e-5)  # found similarities are exact
    # float16 features (e.g. memory-mapped) are searched without a float32 copy of the whole array
    _, half_idx = knn_search(x.astype(np.float16), 30, backend="approx")
    assert recall(half_idx, exact_idx) >= 0.99


def test_approx_clusterings_agree_with_exact():
    pytest.importorskip("faiss")
    x, _ = clustered(noise=0.8, seed=1)
    exact = DBSCANClusterer(eps=0.6, knn="torch").fit_predict(x)
    approx = DBSCANClusterer(eps=0.6, knn="approx").fit_predict(x)
    assert exact.max() > 10 and adjusted_rand_score(exact, approx) >= 0.99
    exact = InfomapClusterer(knn="torch").fit_predict(x)
    approx = InfomapClusterer(knn="approx").fit_predict(x)
    assert exact.max() > 10 and adjusted_rand_score(exact, approx) >= 0.99


def test_lean_graph_gives_the_same_dbscan_labels():
    x, _ = clustered(n=1500, noise=1.0, seed=2)
    full = jaccard_distance(x, 30, 6, knn="torch")
    for eps in (0.4, 0.55, 0.6):
        lean = jaccard_distance(x, 30, 6, knn="torch", max_distance=eps)
        assert lean.nnz < full.nnz
        coo = full.tocoo()  # the full graph's pairs within eps ...
        keep = coo.data <= np.float32(eps)
        expected = {(r, c): v for r, c, v in zip(coo.row[keep], coo.col[keep], coo.data[keep])}
        lc = lean.tocoo()
        assert dict(zip(zip(lc.row, lc.col), lc.data)) == expected  # ... exactly, zeros included
        labels = dbscan_on_graph(full, eps, 4)
        assert labels.max() > 5 and np.array_equal(dbscan_on_graph(lean, eps, 4), labels)
        assert np.array_equal(DBSCANClusterer(eps=eps, knn="torch").fit_predict(x), labels)


def test_auto_switches_above_the_threshold(monkeypatch, caplog):
    pytest.importorskip("faiss")
    monkeypatch.setattr(knn_module, "AUTO_APPROX_ABOVE", 1000)
    with caplog.at_level(logging.INFO, logger="mqreid.cluster.knn"):
        assert resolve_backend("auto", 1000, 64) == "torch"
        assert resolve_backend("auto", 1001, 64) == "approx"
    assert "approx (auto: 1001 points > 1000)" in caplog.text
    x, _ = clustered(n=1500)
    _, idx = knn_search(x, 10)  # auto -> approx
    assert recall(idx, knn_search(x, 10, backend="torch")[1]) >= 0.99


def test_without_faiss(monkeypatch, caplog):
    monkeypatch.setattr(knn_module, "_faiss_available", lambda: False)
    monkeypatch.setattr(knn_module, "AUTO_APPROX_ABOVE", 1000)
    x, _ = clustered(n=1200)
    with pytest.raises(ValueError, match=r"knn='approx' needs faiss.*pip install faiss-cpu"):
        knn_search(x, 5, backend="approx")
    with pytest.raises(ValueError, match="knn='approx' needs faiss"):
        DBSCANClusterer(knn="approx").fit(x)
    with caplog.at_level(logging.WARNING, logger="mqreid.cluster.knn"):
        assert resolve_backend("auto", 10**6, 2048) == "torch"  # stays exact, with the expected time
    assert "faiss is not installed" in caplog.text and "min" in caplog.text
