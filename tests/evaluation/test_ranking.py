"""mAP / CMC under the Market-1501 protocol, checked against hand-worked values and explicit loops."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from mqreid.evaluation import evaluate_features, evaluate_ranking, evaluate_rows, pairwise_distance
from mqreid.evaluation.ranking import _stable_order, _stable_order_by_keys


def distances_from_orders(orders, num_gallery):
    """[Q, G] distances such that query q ranks the gallery as ``orders[q]`` (distance = position)."""
    dist = np.zeros((len(orders), num_gallery))
    for q, order in enumerate(orders):
        dist[q, order] = np.arange(num_gallery)
    return dist


def random_problem(seed, num_q=37, num_g=120, num_ids=12, num_cams=4):
    rng = np.random.default_rng(seed)
    dist = rng.permutation(num_q * num_g).reshape(num_q, num_g).astype(np.float64)  # tie-free
    q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g)
    q_cams, g_cams = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)
    return dist, q_pids, g_pids, q_cams, g_cams


def reference_loop(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """One query at a time: filter, then sklearn's AP and the first correct rank."""
    aps, first = [], []
    for q in range(len(q_pids)):
        keep = ~((g_pids == q_pids[q]) & (g_cams == q_cams[q]))
        is_match = (g_pids == q_pids[q])[keep]
        if not is_match.any():
            continue
        scores = -dist[q][keep]
        aps.append(average_precision_score(is_match, scores))
        first.append(np.flatnonzero(is_match[np.argsort(-scores, kind="stable")])[0] + 1)
    cmc = np.array([np.mean(np.array(first) <= k) for k in range(1, max_rank + 1)])
    return float(np.mean(aps)), cmc, len(aps)


def test_hand_worked_example():
    #               item: 0  1  2  3  4  5  6  7
    g_pids = np.array([1, 1, 2, 2, 3, 1, 3, 4])
    g_cams = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    q_pids = np.array([1, 2, 5, 3])
    q_cams = np.array([0, 1, 0, 2])
    orders = [
        # q0 (pid 1, cam 0): items 0 and 5 are pid 1 on cam 0 -> removed. Filtered ranking
        # 3, [1], 2, 4, 6, 7: one match at position 2 -> AP = 1/2, first match at rank 2.
        [0, 3, 1, 5, 2, 4, 6, 7],
        # q1 (pid 2, cam 1): item 3 removed. Filtered 2, ...: match at position 1 -> AP = 1, rank 1.
        [3, 2, 0, 1, 4, 5, 6, 7],
        # q2 (pid 5): no gallery item has pid 5 -> skipped.
        [0, 1, 2, 3, 4, 5, 6, 7],
        # q3 (pid 3, cam 2): nothing removed; matches 4 (position 2) and 6 (position 5)
        # -> AP = (1/2 + 2/5) / 2 = 0.45, first match at rank 2.
        [7, 4, 0, 1, 6, 2, 3, 5],
    ]
    result = evaluate_ranking(distances_from_orders(orders, 8), q_pids, g_pids, q_cams, g_cams, max_rank=10)

    assert result["num_valid_queries"] == 3
    assert result["mAP"] == pytest.approx((0.5 + 1.0 + 0.45) / 3)  # 0.65
    # Rank-1: only q1 -> 1/3; from rank 2 on every valid query has its match (padded past G = 8).
    np.testing.assert_allclose(result["cmc"], [1 / 3] + [1.0] * 9)
    assert result["cmc"].dtype == np.float64 and isinstance(result["mAP"], float)


def test_perfect_ranking_scores_one():
    g_pids = np.repeat(np.arange(5), 4)
    g_cams = np.tile(np.arange(4), 5)
    q_pids, q_cams = np.arange(5), np.full(5, 9)  # query camera absent from the gallery
    dist = (q_pids[:, None] != g_pids[None, :]).astype(float) + 1e-3 * np.arange(20)
    result = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    assert result["mAP"] == 1.0
    assert result["cmc"].shape == (50,)
    assert (result["cmc"] == 1.0).all()


def test_same_camera_same_id_match_is_excluded():
    # Gallery: the query's id on the query's camera (closest), another id, the query's id elsewhere.
    g_pids, g_cams = np.array([7, 3, 7]), np.array([0, 1, 1])
    dist = np.array([[0.1, 0.2, 0.3]])
    result = evaluate_ranking(dist, np.array([7]), g_pids, np.array([0]), g_cams, max_rank=3)
    # Filtered ranking: [id 3, id 7] -> the match is second.
    assert result["mAP"] == pytest.approx(0.5)
    np.testing.assert_allclose(result["cmc"], [0.0, 1.0, 1.0])


def test_queries_without_valid_match_are_skipped():
    g_pids, g_cams = np.array([1, 2, 2]), np.array([0, 0, 1])
    # q0: pid 1 only on its own camera; q1: pid 9 absent; q2: pid 2 on cam 1 -> valid.
    q_pids, q_cams = np.array([1, 9, 2]), np.array([0, 0, 0])
    dist = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    result = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, max_rank=2)
    assert result["num_valid_queries"] == 1
    # q2's filtered ranking: item 0 (pid 1), item 2 (pid 2); item 1 is removed -> AP 1/2.
    assert result["mAP"] == pytest.approx(0.5)
    np.testing.assert_allclose(result["cmc"], [0.0, 1.0])


def test_ties_are_broken_by_gallery_order():
    g_pids, g_cams = np.array([4, 5, 5]), np.array([0, 0, 0])
    result = evaluate_ranking(np.zeros((1, 3)), np.array([5]), g_pids, np.array([1]), g_cams, max_rank=1)
    assert result["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    np.testing.assert_allclose(result["cmc"], [0.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_reference_loop(seed):
    problem = random_problem(seed)
    m_ap, cmc, num_valid = reference_loop(*problem, max_rank=20)
    result = evaluate_ranking(*problem, max_rank=20, chunk_size=5)
    assert result["num_valid_queries"] == num_valid
    assert result["mAP"] == pytest.approx(m_ap, abs=1e-12)
    np.testing.assert_allclose(result["cmc"], cmc)


def test_chunked_equals_single_chunk_and_numpy_equals_torch():
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(3)
    one = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=len(q_pids))
    for chunk in (1, 4, 16):
        chunked = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=chunk)
        assert chunked["mAP"] == one["mAP"]
        np.testing.assert_array_equal(chunked["cmc"], one["cmc"])
    as_torch = evaluate_ranking(*(torch.from_numpy(x) for x in (dist, q_pids, g_pids, q_cams, g_cams)))
    assert as_torch["mAP"] == one["mAP"]
    np.testing.assert_array_equal(as_torch["cmc"], one["cmc"])
    assert as_torch["num_valid_queries"] == one["num_valid_queries"]


def test_pairwise_distance_matches_explicit_loop():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=gen, dtype=torch.float64), torch.randn(7, 8, generator=gen, dtype=torch.float64)
    euclid, cosine = pairwise_distance(a, b), pairwise_distance(a, b, "cosine")
    assert euclid.shape == cosine.shape == (5, 7)
    for i in range(5):
        for j in range(7):
            assert euclid[i, j].item() == pytest.approx(((a[i] - b[j]) ** 2).sum().item())
            cos = (a[i] @ b[j]) / (a[i].norm() * b[j].norm())
            assert cosine[i, j].item() == pytest.approx(1 - cos.item())


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_evaluate_features_equals_ranking_of_pairwise_distance(metric):
    gen = torch.Generator().manual_seed(1)
    num_ids, q_pids, g_pids = 10, torch.arange(30) % 10, torch.arange(90) % 10
    centres = torch.randn(num_ids, 16, generator=gen, dtype=torch.float64)
    q_feats = centres[q_pids] + 0.8 * torch.randn(30, 16, generator=gen, dtype=torch.float64)
    g_feats = centres[g_pids] + 0.8 * torch.randn(90, 16, generator=gen, dtype=torch.float64)
    q_cams, g_cams = torch.randint(0, 3, (30,), generator=gen), torch.randint(0, 3, (90,), generator=gen)
    expected = evaluate_ranking(pairwise_distance(q_feats, g_feats, metric), q_pids, g_pids, q_cams, g_cams)
    result = evaluate_features(q_feats, g_feats, q_pids, g_pids, q_cams, g_cams, metric=metric, chunk_size=7)
    assert 0.0 < result["mAP"] < 1.0
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    np.testing.assert_array_equal(result["cmc"], expected["cmc"])


def test_no_valid_query_raises_with_counts():
    g_pids, g_cams = np.array([1, 2]), np.array([0, 0])
    with pytest.raises(ValueError, match=r"no query has a correct match.*another camera.*2 queries, 2 gallery"):
        evaluate_ranking(np.zeros((2, 2)), np.array([1, 2]), g_pids, np.array([0, 0]), g_cams)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("distmat", {"distmat": np.zeros(4)}),
        ("q_pids", {"q_pids": np.zeros(2, dtype=int)}),
        ("g_pids", {"g_pids": np.zeros(5, dtype=int)}),
        ("q_camids", {"q_camids": np.zeros((3, 1), dtype=int)}),
        ("g_camids", {"g_camids": np.zeros(3, dtype=int)}),
        ("q_pids", {"q_pids": np.zeros(3)}),  # float ids
        ("chunk_size", {"chunk_size": 0}),
    ],
)
def test_bad_shapes_name_the_argument(name, kwargs):
    args = {
        "distmat": np.zeros((3, 4)),
        "q_pids": np.zeros(3, dtype=int),
        "g_pids": np.zeros(4, dtype=int),
        "q_camids": np.zeros(3, dtype=int),
        "g_camids": np.ones(4, dtype=int),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        evaluate_ranking(**args)


def test_bad_metric_and_feature_sizes_raise():
    feats, ids = torch.randn(3, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="metric must be one of euclidean, cosine; got 'l1'"):
        evaluate_features(feats, feats, ids, ids, ids, ids + 1, metric="l1")
    with pytest.raises(ValueError, match="metric must be one of"):
        pairwise_distance(feats, feats, "l1")
    with pytest.raises(ValueError, match="feature sizes differ"):
        evaluate_features(feats, torch.randn(3, 5), ids, ids, ids, ids + 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(4)
    cpu = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=8)
    cuda = evaluate_ranking(torch.from_numpy(dist).to("cuda"), q_pids, g_pids, q_cams, g_cams, chunk_size=8)
    assert cuda["mAP"] == pytest.approx(cpu["mAP"], abs=1e-12)
    np.testing.assert_array_equal(cuda["cmc"], cpu["cmc"])


def test_evaluate_features_accepts_numpy_and_half_precision():
    gen = torch.Generator().manual_seed(2)
    q_pids, g_pids = torch.arange(12) % 4, torch.arange(40) % 4
    q_cams, g_cams = torch.zeros(12, dtype=torch.long), torch.ones(40, dtype=torch.long)
    centres = torch.randn(4, 32, generator=gen)
    q = centres[q_pids] + torch.randn(12, 32, generator=gen)
    g = centres[g_pids] + torch.randn(40, 32, generator=gen)
    expected = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, metric="cosine")
    as_numpy = evaluate_features(q.numpy(), g.numpy(), q_pids.numpy(), g_pids.numpy(), q_cams.numpy(), g_cams.numpy(),
                                 metric="cosine")
    assert as_numpy["mAP"] == expected["mAP"]
    half = evaluate_features(q.half(), g.half(), q_pids, g_pids, q_cams, g_cams, metric="cosine")
    assert half["mAP"] == pytest.approx(expected["mAP"], abs=0.02)  # float16 inputs are ranked in float32


@pytest.mark.parametrize("threads", [1, 3])  # rows split among threads: 3 parts of 7 rows
@pytest.mark.parametrize("num_g", [1, 2, 64, 65, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cpu_key_sort_equals_torch_stable_sort(monkeypatch, threads, num_g, dtype):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    # Few distinct values (many ties), both zeros, infinities and NaNs of both signs.
    rng = np.random.default_rng(num_g)
    values = np.array([-np.inf, -2.5, -1.0, -0.0, 0.0, 1e-30, 0.5, 1.0, 3.0, np.inf, np.nan, -np.nan], np.float32)
    dist = torch.from_numpy(values[rng.integers(0, len(values), (7, num_g))]).to(dtype)
    expected = torch.sort(dist, dim=1, stable=True).indices
    order = _stable_order(dist)
    assert order.dtype == torch.int64
    torch.testing.assert_close(order, expected, rtol=0, atol=0)
    torch.testing.assert_close(_stable_order_by_keys(dist.T.contiguous().T), expected, rtol=0, atol=0)  # strided


def test_float32_ranking_with_ties_equals_float64():
    # float32 rows on the CPU take the key sort, float64 rows torch's stable sort: same protocol.
    rng = np.random.default_rng(7)
    _, q_pids, g_pids, q_cams, g_cams = random_problem(7)
    dist = rng.integers(0, 6, (len(q_pids), len(g_pids))).astype(np.float64)  # ties everywhere
    as64 = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=5)
    as32 = evaluate_ranking(dist.astype(np.float32), q_pids, g_pids, q_cams, g_cams, chunk_size=5)
    assert as32["mAP"] == as64["mAP"] and as32["num_valid_queries"] == as64["num_valid_queries"]
    np.testing.assert_array_equal(as32["cmc"], as64["cmc"])


@pytest.mark.parametrize("chunk", [1, 6, 37, 100])
def test_evaluate_rows_equals_evaluate_ranking(chunk):
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(5)
    expected = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    calls = []

    def dist_rows(rows):
        calls.append((rows.start, rows.stop))
        return dist[rows].astype(np.float32)

    result = evaluate_rows(dist_rows, dist.shape, q_pids, g_pids, q_cams, g_cams, chunk_size=chunk)
    assert calls == [(s, min(s + chunk, 37)) for s in range(0, 37, chunk)]
    assert result["mAP"] == expected["mAP"] and result["num_valid_queries"] == expected["num_valid_queries"]
    np.testing.assert_array_equal(result["cmc"], expected["cmc"])


@pytest.mark.parametrize("block_rows", [1, 7, 14, 20])  # 1 and 7: one chunk per block; 20: rounded down to 14
def test_evaluate_features_distance_blocks(monkeypatch, block_rows):
    gen = torch.Generator().manual_seed(3)
    q_pids, g_pids = torch.arange(30) % 10, torch.arange(90) % 10
    q_feats, g_feats = torch.randn(30, 16, generator=gen), torch.randn(90, 16, generator=gen)
    q_feats += 2 * torch.randn(10, 16, generator=gen)[q_pids]
    g_feats += 2 * torch.randn(10, 16, generator=gen)[g_pids]
    q_cams, g_cams = torch.randint(0, 3, (30,), generator=gen), torch.randint(0, 3, (90,), generator=gen)
    expected = evaluate_ranking(pairwise_distance(q_feats, g_feats), q_pids, g_pids, q_cams, g_cams)
    monkeypatch.setattr("mqreid.evaluation.ranking.DISTANCE_BLOCK_ROWS", block_rows)
    result = evaluate_features(q_feats, g_feats, q_pids, g_pids, q_cams, g_cams, chunk_size=7)
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    np.testing.assert_array_equal(result["cmc"], expected["cmc"])
