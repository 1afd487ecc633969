"""The sparse Jaccard distance against an explicit dense, loop-based version of the six steps, and the
encoding (torch ops on the features' device) against a scipy/numpy formulation of the same steps."""

import logging

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mqreid.cluster import jaccard, jaccard_distance, knn_search
from mqreid.cluster.jaccard import k_reciprocal_encoding, min_overlap, reciprocal_sets


def blobs(n=120, d=16, centres=8, noise=0.35, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def dense_ranking(x, length):
    """Rows sorted by decreasing similarity; ties: self first, then lower index."""
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    n = len(x)
    rank = np.empty((n, length), np.int64)
    for i in range(n):
        key = [(-s[i, j], j != i, j) for j in range(n)]
        rank[i] = sorted(range(n), key=lambda j: key[j])[:length]
    return rank


def dense_jaccard(x, k1, k2):
    """Steps 1-6 written out with dense arrays and Python loops."""
    n = len(x)
    rank = dense_ranking(x, min(k1, n))

    def recip(i, k):
        forward = rank[i, : k + 1]
        return [j for j in forward if i in rank[j, : k + 1]]

    kh = int(np.around(k1 / 2))
    v = np.zeros((n, n))
    for i in range(n):
        r1 = recip(i, k1)
        expanded = list(r1)
        for c in r1:
            half = recip(c, kh)
            if len(set(half) & set(r1)) > 2 / 3 * len(half):
                expanded += half
        expanded = np.unique(expanded)
        dist = 2 - 2 * x[i].astype(np.float64) @ x[expanded].T.astype(np.float64)
        w = np.exp(-dist)
        v[i, expanded] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jac = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            m = np.minimum(v[i], v[j]).sum()
            jac[i, j] = max(1 - m / (2 - m), 0.0)
    return jac


def densify(graph):
    d = np.ones(graph.shape)
    coo = graph.tocoo()
    d[coo.row, coo.col] = coo.data
    return d


@pytest.mark.parametrize("k1,k2", [(20, 6), (10, 1), (7, 3), (30, 6)])
def test_matches_dense_reference(k1, k2):
    x = blobs(n=100, seed=k1)
    graph = jaccard_distance(x, k1=k1, k2=k2, knn="torch")
    assert isinstance(graph, sp.csr_matrix) and graph.shape == (100, 100)
    ref = dense_jaccard(x, k1, k2)
    assert np.abs(densify(graph) - ref).max() < 1e-4
    # every pair below 1 is stored explicitly, including zeros on the diagonal
    stored = np.zeros((100, 100), bool)
    stored[graph.tocoo().row, graph.tocoo().col] = True
    assert np.array_equal(stored, ref < 1 - 1e-6)
    assert np.all(graph.diagonal() == 0) and graph.has_canonical_format


@pytest.mark.parametrize("budget", [1, 7, 64])
def test_blocks_do_not_change_the_graph(monkeypatch, budget):
    """The expansion and overlap steps work in blocks of rows (PAIR_BUDGET); blocks of any size give the same
    graph as one block."""
    x = blobs(n=300, seed=5)
    whole = jaccard_distance(x, k1=20, k2=6, knn="torch")
    monkeypatch.setattr(jaccard, "PAIR_BUDGET", budget)
    blocked = jaccard_distance(x, k1=20, k2=6, knn="torch")
    assert np.array_equal(whole.indptr, blocked.indptr) and np.array_equal(whole.indices, blocked.indices)
    assert np.array_equal(whole.data, blocked.data)


def test_symmetric():
    a = jaccard_distance(blobs(n=150, seed=3), 20, 6, knn="torch")
    assert abs(a - a.T).max() < 1e-6


def test_backend_independent():
    pytest.importorskip("faiss")
    x = blobs(n=150, seed=3)
    a = jaccard_distance(x, 20, 6, knn="torch")
    b = jaccard_distance(torch.from_numpy(x), 20, 6, knn="faiss")
    assert abs(a - b).max() < 1e-5


def test_min_overlap_upper_and_rectangular():
    rng = np.random.default_rng(0)
    v = sp.random(30, 40, density=0.2, random_state=1, format="csr")
    dense = v.toarray()
    m = np.array([[np.minimum(dense[i], dense[j]).sum() for j in range(30)] for i in range(30)])
    upper = min_overlap(v).toarray()
    assert np.allclose(upper, np.triu(m, 1))
    rows, cols = rng.choice(30, 7, replace=False), rng.choice(30, 11, replace=False)
    assert np.allclose(min_overlap(v[rows], v[cols]).toarray(), m[np.ix_(rows, cols)])


def test_small_n_clamps_k1():
    x = blobs(n=12, seed=1)
    graph = jaccard_distance(x, k1=30, k2=6)
    assert graph.shape == (12, 12)
    assert np.abs(densify(graph) - dense_jaccard(x, 30, 6)).max() < 1e-4


def test_duplicates_and_identical_points():
    x = blobs(n=40, seed=2)
    dup = np.concatenate([x, x[:10]])
    graph = jaccard_distance(dup, k1=8, k2=3, knn="torch")
    assert np.abs(densify(graph) - dense_jaccard(dup, 8, 3)).max() < 1e-4
    same = np.tile(x[:1], (25, 1))
    graph = jaccard_distance(same, k1=10, k2=6)
    assert graph.shape == (25, 25) and np.all(graph.diagonal() == 0)
    assert np.all(np.isfinite(graph.data))


def test_input_validation_and_normalisation():
    x = blobs(n=30)
    with pytest.raises(ValueError, match="features"):
        jaccard_distance(np.where(np.eye(30, 16) > 0, np.nan, x), k1=5)
    with pytest.raises(ValueError, match="k1"):
        jaccard_distance(x, k1=0)
    scaled = jaccard_distance(x * 3.0, k1=8, k2=3)
    assert abs(scaled - jaccard_distance(x, k1=8, k2=3)).max() < 1e-6


def scipy_encoding(x, rank, sims, k1, k2, row_scale=None):
    """Steps 2-5 with scipy sparse matrices and Python sets, a second formulation to compare the
    device encoding with: reciprocal sets as ``A .* A^T`` of the binary rank-prefix matrix, the
    expansion test per row, similarities looked up in the kNN lists or computed, query expansion as
    a scipy product."""
    n, length = rank.shape

    def prefix(width):
        width = min(width, length)
        a = sp.csr_matrix((np.ones(n * width), (np.repeat(np.arange(n), width), rank[:, :width].ravel())), shape=(n, n))
        a.sum_duplicates()
        a.data[:] = 1.0
        return a

    def recip(k):
        a = prefix(k + 1)
        r = a.multiply(a.T).tocsr()
        r.sort_indices()
        return r

    r1, rh = recip(k1), recip(int(np.around(k1 / 2)))
    rows, cols = [], []
    r1_keys = set(zip(*r1.nonzero()))
    for i in range(n):
        expanded = set(r1.indices[r1.indptr[i]:r1.indptr[i + 1]])
        for c in r1.indices[r1.indptr[i]:r1.indptr[i + 1]]:
            half = rh.indices[rh.indptr[c]:rh.indptr[c + 1]]
            if sum((i, j) in r1_keys for j in half) > 2 / 3 * len(half):
                expanded |= set(half)
        rows += [i] * len(expanded)
        cols += sorted(expanded)
    rows, cols = np.array(rows), np.array(cols)
    lookup = {(i, j): s for i in range(n) for j, s in zip(rank[i], sims[i])}
    dots = np.einsum("ij,ij->i", x[rows], x[cols])  # float32 products and sums, as the CPU path computes them
    cos = np.array([lookup.get((i, j), d) for i, j, d in zip(rows, cols, dots)], np.float64)
    logits = -(2.0 - 2.0 * cos)
    if row_scale is not None:
        logits = logits / row_scale[rows]
    row_max = np.full(n, -np.inf)
    np.maximum.at(row_max, rows, logits)
    w = np.exp(logits - row_max[rows])
    w /= np.bincount(rows, weights=w, minlength=n)[rows]
    v = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    if k2 != 1:
        v = (prefix(k2) / float(min(k2, length)) @ v).tocsr()
    v.sort_indices()
    return v


@pytest.mark.parametrize("n,k1,k2,extra", [(400, 20, 6, 0), (300, 7, 1, 0), (250, 10, 3, 1), (60, 30, 6, 0)])
def test_encoding_equals_the_scipy_formulation(n, k1, k2, extra):
    """Same sets exactly, same weights to float64 rounding (the exponentials and sums may differ in
    the last bit); ``extra`` > 0: rankings longer than k1 with a per-row scale, as the re-ranking
    passes them."""
    x = blobs(n=n, d=16, centres=6, noise=0.5, seed=n)
    sims, rank = knn_search(x, min(k1 + extra, n), backend="torch")
    scale = 1.0 + np.random.default_rng(0).random(n) if extra else None
    ref = scipy_encoding(x, rank, sims, k1, k2, scale)
    for r, s in ((rank, sims), (torch.from_numpy(rank), torch.from_numpy(sims))):
        v = k_reciprocal_encoding(torch.from_numpy(x), r, s, k1, k2, row_scale=scale)
        assert np.array_equal(v.indptr, ref.indptr) and np.array_equal(v.indices, ref.indices)
        assert np.allclose(v.data, ref.data, rtol=1e-13, atol=0)
    assert np.allclose(np.asarray(ref.sum(1)).ravel(), 1.0)
    r1 = reciprocal_sets(rank, k1)
    dense = np.zeros((n, n), bool)
    for i in range(n):
        for j in rank[i, :k1 + 1]:
            dense[i, j] = i in rank[j, :k1 + 1]
    assert np.array_equal(r1.toarray() > 0, dense)


def test_log_line_names_each_steps_device(caplog):
    x = torch.from_numpy(blobs(n=200, seed=4))
    with caplog.at_level(logging.INFO, logger="mqreid.cluster"):
        jaccard_distance(x, 20, 6, knn="torch")
        from mqreid.cluster import DBSCANClusterer

        DBSCANClusterer(eps=0.6, k1=20, knn="torch").fit(x)
    jac, db = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("Jaccard distance", "DBSCAN"))]
    assert "kNN " in jac and "s (cpu), encoding " in jac and "s (cpu), overlap " in jac
    assert "s (cpu), DBSCAN " in db and db.count("(cpu)") == 4


def test_accelerator_code_path_on_the_cpu(monkeypatch):
    """With ``NUMPY_ON_HOST`` off, the CPU runs the torch primitives that accelerators run (sort,
    searchsorted, nonzero, pair dot products): same sets, same weights up to float32 rounding of the
    computed similarities, the same graph within eps."""
    x = blobs(n=500, d=16, centres=8, noise=0.5, seed=9)
    sims, rank = knn_search(x, 20, backend="torch")
    host = k_reciprocal_encoding(torch.from_numpy(x), rank, sims, 20, 6)
    graph = jaccard_distance(x, 20, 6, knn="torch", max_distance=0.6)
    monkeypatch.setattr(jaccard, "NUMPY_ON_HOST", False)
    device = k_reciprocal_encoding(torch.from_numpy(x), rank, sims, 20, 6)
    assert np.array_equal(host.indptr, device.indptr) and np.array_equal(host.indices, device.indices)
    assert np.allclose(host.data, device.data, rtol=1e-6, atol=0)
    other = jaccard_distance(x, 20, 6, knn="torch", max_distance=0.6)
    assert abs(graph - other).max() < 1e-6 and abs(graph.nnz - other.nnz) <= 2
