"""Sparse k-reciprocal re-ranking against a dense, loop-based version of the original, and its
chunked evaluation against the dense matrix."""

import numpy as np
import pytest
import torch

from mqreid.evaluation import evaluate_ranking, evaluate_retrieval, evaluate_rows, summarise_percent
from mqreid.evaluation.rerank import ReRanker, re_ranking


def features(n, d=12, centres=5, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + 0.4 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def dense_re_ranking(q, g, k1, k2, lam):
    """The original algorithm with dense arrays; rankings break ties by self first, then index."""
    x = np.concatenate([q, g]).astype(np.float64)
    n, nq = len(x), len(q)
    dist = np.maximum(2 - 2 * x @ x.T, 0)
    dist = dist / dist.max(axis=1, keepdims=True)  # symmetric: column max == row max
    rank = np.array([sorted(range(n), key=lambda j: (dist[i, j], j != i, j)) for i in range(n)])

    def recip(i, k):
        return [j for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    v = np.zeros((n, n))
    for i in range(n):
        r1 = recip(i, k1)
        expanded = list(r1)
        for c in r1:
            half = recip(c, int(np.around(k1 / 2)))
            if len(np.intersect1d(half, r1)) > 2 / 3 * len(half):
                expanded += half
        expanded = np.unique(expanded)
        w = np.exp(-dist[i, expanded])
        v[i, expanded] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jac = np.ones((nq, n))
    for i in range(nq):
        for j in range(n):
            m = np.minimum(v[i], v[j]).sum()
            jac[i, j] = 1 - m / (2 - m)
    final = (1 - lam) * jac + lam * dist[:nq]
    return final[:, nq:]


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (8, 1, 0.0), (5, 3, 1.0)])
def test_matches_dense_reference(k1, k2, lam):
    q, g = features(15, seed=k1), features(60, seed=k1 + 1)
    out = re_ranking(q, g, k1, k2, lam, knn="torch")
    assert out.shape == (15, 60) and out.dtype == np.float32
    assert np.abs(out - dense_re_ranking(q, g, k1, k2, lam)).max() < 1e-4


def test_torch_input_and_normalisation():
    q, g = features(10, seed=3), features(30, seed=4)
    ref = re_ranking(q, g, 6, 3)
    assert np.allclose(re_ranking(torch.from_numpy(q) * 2, torch.from_numpy(g), 6, 3), ref, atol=1e-6)


def test_validation():
    q, g = features(5), features(10, d=8)
    with pytest.raises(ValueError, match="g_feats"):
        re_ranking(q, g)
    with pytest.raises(ValueError, match="lambda_value"):
        re_ranking(q, features(10), lambda_value=2.0)
    with pytest.raises(ValueError, match="q_feats"):
        re_ranking(np.full((3, 12), np.nan), features(10))


def labelled_split(num_q=23, num_g=80, num_ids=6, d=16, seed=5):
    """Query/gallery features clustered by id, with ids and cameras (every query has a valid match)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_ids, d))
    q_pids, g_pids = np.arange(num_q) % num_ids, rng.integers(0, num_ids, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    q = centres[q_pids] + 0.9 * rng.standard_normal((num_q, d))
    g = centres[g_pids] + 0.9 * rng.standard_normal((num_g, d))
    return q.astype(np.float32), g.astype(np.float32), q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("chunk", [1, 5, 8, 23, 64])  # 5 and 8 do not divide Q = 23
def test_chunked_rows_and_evaluation_equal_dense(chunk):
    q, g, q_pids, g_pids, q_cams, g_cams = labelled_split()
    dense = re_ranking(q, g, 8, 3, 0.3, knn="torch")
    reranker = ReRanker(q, g, 8, 3, 0.3, knn="torch")
    assert reranker.shape == dense.shape == (23, 80)
    blocks = [reranker.rows(slice(s, s + chunk)) for s in range(0, 23, chunk)]
    assert all(b.dtype == np.float32 for b in blocks)
    assert np.abs(np.concatenate(blocks) - dense).max() < 1e-5
    expected = evaluate_ranking(dense, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    result = evaluate_rows(reranker.rows, reranker.shape, q_pids, g_pids, q_cams, g_cams, max_rank=10,
                           chunk_size=chunk)
    assert 0.0 < result["mAP"] < 1.0
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-5)
    np.testing.assert_allclose(result["cmc"], expected["cmc"], atol=1e-5)
    assert result["num_valid_queries"] == expected["num_valid_queries"] == 23


def test_evaluate_retrieval_reranked_row_equals_dense():
    q, g, q_pids, g_pids, q_cams, g_cams = labelled_split(seed=6)
    rows = evaluate_retrieval(torch.from_numpy(q), torch.from_numpy(g), q_pids, g_pids, q_cams, g_cams,
                              rerank=True, k1=8, k2=3, lambda_value=0.3)
    expected = summarise_percent(evaluate_ranking(re_ranking(q, g, 8, 3, 0.3), q_pids, g_pids, q_cams, g_cams))
    for name, value in expected.items():
        assert rows["re-ranked"][name] == pytest.approx(value, abs=1e-3)


def test_rows_validation():
    q, g, q_pids, g_pids, q_cams, g_cams = labelled_split()
    reranker = ReRanker(q, g, 6, 3)
    with pytest.raises(TypeError, match="slice"):
        reranker.rows(3)
    with pytest.raises(ValueError, match=r"dist_rows\(0:4\) returned shape \(4, 79\)"):
        evaluate_rows(lambda rows: reranker.rows(rows)[:, 1:], reranker.shape, q_pids, g_pids, q_cams, g_cams,
                      chunk_size=4)
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_rows(reranker.rows, reranker.shape, q_pids, g_pids[1:], q_cams, g_cams)
