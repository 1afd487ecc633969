"""Infomap on a cosine kNN graph recovers well-separated communities."""

import logging
import warnings

import infomap
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from mqreid.cluster import InfomapClusterer
from mqreid.cluster.labels import cluster_summary, relabel_contiguous


def blobs(n=120, d=16, centres=4, noise=0.15, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    y = rng.integers(0, centres, n)
    x = c[y] + noise * rng.standard_normal((n, d)) * np.linalg.norm(c[y], axis=1, keepdims=True) / 4
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def test_recovers_communities(caplog):
    x, y = blobs()
    with caplog.at_level(logging.INFO, logger="mqreid.cluster.infomap"):
        labels = InfomapClusterer(k=10, min_sim=0.5, knn="torch").fit_predict(x)
    assert labels.dtype == np.int64 and set(labels) == set(range(4))
    assert adjusted_rand_score(y, labels) == 1.0
    assert "clusters" in caplog.text


def test_outliers_and_determinism():
    x, y = blobs(seed=1)
    rng = np.random.default_rng(5)
    far = rng.standard_normal((6, 16))
    x = np.concatenate([x, (far / np.linalg.norm(far, axis=1, keepdims=True)).astype(np.float32)])
    est = InfomapClusterer(k=10, min_sim=0.6, min_cluster_size=5, seed=3)
    labels = est.fit_predict(x)
    assert np.all(labels[-6:] == -1)  # no link above min_sim
    kept = labels[:-6] >= 0
    assert kept.mean() > 0.95 and adjusted_rand_score(y[kept], labels[:-6][kept]) == 1.0
    assert np.array_equal(labels, InfomapClusterer(k=10, min_sim=0.6, seed=3).fit_predict(x))
    # clusters smaller than min_cluster_size are outliers
    assert np.all(InfomapClusterer(k=10, min_sim=0.6, min_cluster_size=1000).fit_predict(x) == -1)


def test_degenerate_inputs():
    assert np.array_equal(InfomapClusterer(k=15, min_cluster_size=2).fit_predict(np.ones((6, 3))),
                          np.zeros(6, np.int64))  # all identical, N < k
    assert np.array_equal(InfomapClusterer().fit_predict(np.eye(4, dtype=np.float32)), -np.ones(4))
    with pytest.raises(ValueError, match="features"):
        InfomapClusterer().fit_predict(np.full((5, 3), np.inf))
    with pytest.raises(ValueError, match="min_sim"):
        InfomapClusterer(min_sim=2.0).fit_predict(np.eye(4))


def test_relabel_contiguous_and_summary():
    out = relabel_contiguous(np.array([7, 7, 3, -1, 9, 3, 7]), min_cluster_size=2)
    assert np.array_equal(out, [0, 0, 1, -1, -1, 1, 0])
    assert cluster_summary(out) == (2, pytest.approx(2 / 7))
    assert cluster_summary(np.array([], np.int64)) == (0, 0.0)


def test_fit_emits_no_warning():
    x, _ = blobs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        InfomapClusterer(k=10, min_sim=0.5, knn="torch").fit(x)
    assert [str(w.message) for w in caught] == []


def test_only_the_get_modules_deprecation_is_silenced(monkeypatch):
    real = infomap.Infomap.get_modules

    def get_modules_with_another_warning(self, *args, **kwargs):
        warnings.warn("another deprecation", DeprecationWarning)
        warnings.warn("a runtime problem", RuntimeWarning)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(infomap.Infomap, "get_modules", get_modules_with_another_warning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        InfomapClusterer(k=10, min_sim=0.5, knn="torch").fit(blobs()[0])
    assert sorted(str(w.message) for w in caught) == ["a runtime problem", "another deprecation"]
