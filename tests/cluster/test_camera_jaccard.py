"""The camera-aware Jaccard distance (CA-Jaccard) against an explicit dense, loop-based version of the authors'
steps (rankings of ``d + 999 * [other camera]`` and ``d + 999 * [same camera]``, reciprocal sets on each,
their union, softmax weights, the camera-aware query expansion, the Jaccard of the overlaps)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN

from mqreid.cluster import DBSCANClusterer, jaccard_distance
from mqreid.cluster import jaccard as jaccard_module
from mqreid.cluster.dbscan import dbscan_on_graph


def camera_blobs(n=120, d=16, centres=8, cameras=4, noise=0.35, shift=0.6, seed=0):
    """Unit features of ``centres`` identities seen by ``cameras`` cameras, each camera adding its own offset."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    offsets = shift * rng.standard_normal((cameras, d))
    ids, cams = rng.integers(0, centres, n), rng.integers(0, cameras, n)
    x = c[ids] + offsets[cams] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), cams


def dense_rankings(x, cams):
    """The authors' two rankings of every row, as full permutations: the preferred part (same camera for
    intra, other cameras for inter) first, each part by decreasing similarity; ties: self, then lower index."""
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    n = len(x)
    intra, inter = np.empty((n, n), np.int64), np.empty((n, n), np.int64)
    for i in range(n):
        same = [cams[j] != cams[i] for j in range(n)]  # False (0) sorts first: same camera first
        intra[i] = sorted(range(n), key=lambda j: (same[j], -s[i, j], j != i, j))
        inter[i] = sorted(range(n), key=lambda j: (not same[j], -s[i, j], j != i, j))
    return intra, inter


def dense_ca_jaccard(x, cams, k1_intra, k1_inter, k2_intra, k2_inter):
    n = len(x)
    intra, inter = dense_rankings(x, cams)

    def recip(rank, i, k):
        forward = rank[i, :k + 1]
        return np.array([j for j in forward if i in rank[j, :k + 1]], np.int64)

    v = np.zeros((n, n))
    for i in range(n):
        union = np.union1d(recip(intra, i, k1_intra), recip(inter, i, k1_inter))
        dist = 2 - 2 * x[i].astype(np.float64) @ x[union].T.astype(np.float64)
        w = np.exp(-dist)
        v[i, union] = w / w.sum()
    v = np.stack([v[np.append(intra[i, :k2_intra], inter[i, :k2_inter])].mean(0) for i in range(n)])
    jac = np.ones((n, n))
    for i in range(n):
        m = np.minimum(v[i][None], v).sum(1)
        jac[i] = np.maximum(1 - m / (2 - m), 0.0)
    return jac


def densify(graph):
    d = np.ones(graph.shape)
    coo = graph.tocoo()
    d[coo.row, coo.col] = coo.data
    return d


@pytest.mark.parametrize("k1_intra,k1_inter,k2_intra,k2_inter,cameras", [
    (5, 20, 2, 4, 4),   # the published commands
    (5, 20, 3, 3, 4),   # the first clustering (the authors' warm-up)
    (3, 8, 1, 0, 3),    # no query expansion
    (2, 30, 0, 1, 6),   # expansion over the nearest other-camera row only
])
def test_matches_dense_reference(k1_intra, k1_inter, k2_intra, k2_inter, cameras):
    x, cams = camera_blobs(n=110, cameras=cameras, seed=k1_inter)
    params = dict(k1_intra=k1_intra, k1_inter=k1_inter, k2_intra=k2_intra, k2_inter=k2_inter)
    graph = jaccard_distance(x, cameras=cams, knn="torch", **params)
    assert isinstance(graph, sp.csr_matrix) and graph.shape == (110, 110) and graph.has_canonical_format
    ref = dense_ca_jaccard(x, cams, **params)
    assert np.abs(densify(graph) - ref).max() < 1e-5
    stored = np.zeros(ref.shape, bool)
    stored[graph.tocoo().row, graph.tocoo().col] = True
    assert np.array_equal(stored, ref < 1 - 1e-6)
    assert np.all(graph.diagonal() == 0)
    for eps in (0.4, 0.6):  # the same clusters from both
        expected = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(ref)
        assert np.array_equal(dbscan_on_graph(graph, eps, 4), expected)


def test_small_cameras_continue_with_the_other_ranking():
    """A camera with one image and a camera with fewer images than k1_intra + 1: their intra rankings continue
    with the other cameras' images, as in the authors' code; a single camera: the inter ranking is the own
    camera's."""
    x, cams = camera_blobs(n=60, cameras=3, seed=4)
    cams[0] = 7          # one image
    cams[1:4] = 8        # three images
    graph = jaccard_distance(x, cameras=cams, knn="torch")
    assert np.abs(densify(graph) - dense_ca_jaccard(x, cams, 5, 20, 2, 4)).max() < 1e-5
    one = np.zeros(60, np.int64)
    graph = jaccard_distance(x, cameras=one, knn="torch")
    assert np.abs(densify(graph) - dense_ca_jaccard(x, one, 5, 20, 2, 4)).max() < 1e-5


def test_fewer_points_than_the_ranking_width():
    x, cams = camera_blobs(n=12, cameras=3, seed=2)
    graph = jaccard_distance(x, cameras=cams, knn="torch")
    assert graph.shape == (12, 12)
    assert np.abs(densify(graph) - dense_ca_jaccard(x, cams, 5, 20, 2, 4)).max() < 1e-5


def test_without_cameras_the_camera_settings_change_nothing():
    x, _ = camera_blobs(n=90, seed=1)
    plain = jaccard_distance(x, 20, 6, knn="torch")
    other = jaccard_distance(x, 20, 6, knn="torch", k1_intra=2, k1_inter=9, k2_intra=1, k2_inter=0)
    assert np.array_equal(plain.indptr, other.indptr) and np.array_equal(plain.indices, other.indices)
    assert np.array_equal(plain.data, other.data)


def test_symmetric_and_torch_input():
    x, cams = camera_blobs(n=100, seed=3)
    a = jaccard_distance(x, cameras=cams, knn="torch")
    b = jaccard_distance(torch.from_numpy(x), cameras=torch.from_numpy(cams), knn="torch")
    assert abs(a - a.T).max() < 1e-6
    assert abs(a - b).max() == 0


def test_accelerator_code_path_on_the_cpu(monkeypatch):
    """With the host shortcuts off, the encoding runs the torch code an accelerator runs: same graph."""
    x, cams = camera_blobs(n=100, seed=6)
    host = jaccard_distance(x, cameras=cams, knn="torch")
    monkeypatch.setattr(jaccard_module, "NUMPY_ON_HOST", False)
    device_path = jaccard_distance(x, cameras=cams, knn="torch")
    assert abs(host - device_path).max() < 1e-6


def test_bad_cameras_and_settings():
    x, cams = camera_blobs(n=30, seed=0)
    with pytest.raises(ValueError, match=r"cameras: expected shape \(30,\)"):
        jaccard_distance(x, cameras=cams[:-1])
    with pytest.raises(ValueError, match="cameras: expected integer camera ids"):
        jaccard_distance(x, cameras=cams.astype(np.float32))
    with pytest.raises(ValueError, match="k1_intra=-1: expected an integer >= 0"):
        jaccard_distance(x, cameras=cams, k1_intra=-1)
    with pytest.raises(ValueError, match="k2_inter=0: expected k2_intra \\+ k2_inter >= 1"):
        jaccard_distance(x, cameras=cams, k2_intra=0, k2_inter=0)


def test_clusterer_camera_aware_and_first_clustering():
    """DBSCANClusterer(camera_aware=True) clusters the camera-aware graph; ``first=True`` uses the first
    clustering's query expansion (3 + 3); without cameras it refuses to run camera-aware."""
    x, cams = camera_blobs(n=150, seed=8)
    clusterer = DBSCANClusterer(eps=0.6, camera_aware=True, knn="torch")
    labels = clusterer.fit_predict(x, cameras=cams)
    expected = dbscan_on_graph(jaccard_distance(x, cameras=cams, knn="torch", max_distance=0.6), 0.6, 4)
    assert np.array_equal(labels, expected)
    first = clusterer.fit_predict(x, cameras=cams, first=True)
    warm = dbscan_on_graph(jaccard_distance(x, cameras=cams, knn="torch", k2_intra=3, k2_inter=3), 0.6, 4)
    assert np.array_equal(first, warm)
    with pytest.raises(ValueError, match="camera_aware=true: expected camera ids"):
        clusterer.fit(x)
    plain = DBSCANClusterer(eps=0.6, knn="torch")
    assert np.array_equal(plain.fit_predict(x, cameras=cams), plain.fit_predict(x))  # cameras unused


def test_duplicates_across_cameras_keep_the_tie_order():
    """Duplicated images on other cameras tie across the cut of the inter-camera lists: the rows are searched
    again, and the lower index wins as in the reference."""
    x, cams = camera_blobs(n=70, cameras=4, seed=9)
    dup = np.concatenate([x, x[:30], x[:30]])
    dup_cams = np.concatenate([cams, (cams[:30] + 1) % 4, (cams[:30] + 2) % 4])
    params = dict(k1_intra=3, k1_inter=4, k2_intra=2, k2_inter=2)
    graph = jaccard_distance(dup, cameras=dup_cams, knn="torch", **params)
    assert np.abs(densify(graph) - dense_ca_jaccard(dup, dup_cams, **params)).max() < 1e-5
