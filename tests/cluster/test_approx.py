"""knn="approx" (faiss k-means cells) against the exact path, also with background points that belong
to no identity; the device-aware choice of the backend and its log; faiss being optional; and the lean
(pairs within eps) Jaccard graph that DBSCAN gets."""

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
from mqreid.cluster.knn import choose_backend, resolve_backend


def clustered(n=3000, d=64, ids=100, noise=0.5, seed=0, background=0.0):
    """~30 points per identity around unit centres, like the bench's synthetic features; with
    ``background``, that fraction of the points are isotropic random directions (label -1)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, ids, n)
    x = centres[y] + noise / np.sqrt(d) * rng.standard_normal((n, d))
    far = rng.random(n) < background
    x[far] = rng.standard_normal((far.sum(), d))
    y[far] = -1
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
        assert resolve_backend("auto", 1000, 64).backend == "torch"
        assert resolve_backend("auto", 1001, 64) == (
            "approx", "cpu", "auto: approximate, 1001 points > the CPU switch point AUTO_APPROX_ABOVE = 1000", False)
    assert ("kNN backend: approx on cpu (auto: approximate, 1001 points > the CPU switch point "
            "AUTO_APPROX_ABOVE = 1000)") in caplog.text
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
        assert resolve_backend("auto", 10**6, 2048).backend == "torch"  # stays exact, with the expected time
    assert "faiss is not installed" in caplog.text and "min" in caplog.text
    assert caplog.records[-1].levelno == logging.WARNING


def test_approx_with_background_points(monkeypatch, caplog):
    """Background points (no identity) have neighbours in every cell: the cells alone find few of them
    (checked below with the check switched off), which would make clusters of background. The check
    searches those rows further, so the lists and DBSCAN's labels match the exact path."""
    pytest.importorskip("faiss")
    x, y = clustered(n=4000, d=64, ids=120, noise=0.8, seed=3, background=0.15)
    exact_sims, exact_idx = knn_search(x, 30, backend="torch")
    kth = exact_sims[:, -1:] - 1e-6
    background = y == -1
    with monkeypatch.context() as m:  # cells only: no row searched further, no recall target
        m.setattr(knn_module, "MISS_BUDGET", float("inf"))
        m.setattr(knn_module, "RECALL_TARGET", 0.0)
        cells_sims, _ = knn_search(x, 30, backend="approx")
    assert ((cells_sims >= kth).mean(1)[background]).mean() < 0.8
    with caplog.at_level(logging.INFO, logger="mqreid.cluster.knn"):
        sims, idx = knn_search(x, 30, backend="approx")
    found = (sims >= kth).mean(1)  # recall@30 (ties count as found)
    assert found.mean() >= 0.99 and found[background].mean() >= 0.99 and found[~background].mean() >= 0.99
    assert np.allclose(sims, np.einsum("ij,ikj->ik", x, x[idx]), atol=1e-5)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("approx kNN"))
    scanned = int(line.split(" rows searched in more cells, ")[1].split()[0])
    assert scanned >= 0.9 * background.sum()  # the background rows were searched against all points
    exact = DBSCANClusterer(eps=0.6, knn="torch").fit_predict(x)
    approx = DBSCANClusterer(eps=0.6, knn="approx").fit_predict(x)
    assert exact.max() > 20 and np.sum(exact == -1) >= 0.5 * background.sum()
    assert adjusted_rand_score(exact, approx) >= 0.99


def test_choice_is_device_aware():
    """The choice is a pure function of (request, N, D, device type, faiss support): a GPU needs no
    GPU to be tested."""
    n, d = 10**6, 2048
    assert choose_backend("auto", n, d, "cpu", "cpu")[:3] == (
        "approx", "cpu", "auto: approximate, 1000000 points > the CPU switch point AUTO_APPROX_ABOVE = 200000")
    choice = choose_backend("auto", n, d, "cuda", "cpu")  # 2e15 multiply-adds: exact, on the GPU
    assert choice.backend == "torch" and choice.device == "cuda" and not choice.warn
    assert "exact on the device" in choice.reason and "2.0e+15" in choice.reason
    assert choose_backend("auto", n, d, "cuda", "gpu")[:2] == ("torch", "cuda")
    assert choose_backend("auto", n, d, "cuda", "none")[:2] == ("torch", "cuda")
    big = 5 * 10**6  # 5.1e16: beyond the exact device search
    choice = choose_backend("auto", big, d, "cuda", "cpu")
    assert choice[:2] == ("approx", "cpu") and "beyond the exact search on the device" in choice.reason
    choice = choose_backend("auto", big, d, "cuda", "none")
    assert choice[:2] == ("torch", "cuda") and choice.warn and "faiss is not installed" in choice.reason
    assert choose_backend("auto", 50_000, 256, "cpu", "none")[:2] == ("torch", "cpu")
    assert choose_backend("torch", n, d, "cuda", "none")[:2] == ("torch", "cuda")
    choice = choose_backend("approx", n, d, "cuda", "gpu")  # the cell search runs on the host
    assert choice[:2] == ("approx", "cpu") and choice.warn and "on the CPU" in choice.reason
    with pytest.raises(ValueError, match="needs faiss"):
        choose_backend("approx", n, d, "cpu", "none")
    with pytest.raises(ValueError, match="backend"):
        choose_backend("annoy", n, d)


def test_auto_cpu_switch_point():
    """``auto`` on the CPU: exact up to the measured switch point (200k points, at any D: exact and approx
    broke even at the same N at D = 256 and 2048), approx above it; the reason names the threshold; an
    explicit backend ignores it."""
    assert knn_module.AUTO_APPROX_ABOVE == 200_000
    for n, d in ((100_001, 256), (150_000, 2048), (200_000, 256), (200_000, 2048)):  # 100k was the old switch
        choice = choose_backend("auto", n, d, "cpu", "cpu")
        assert choice == ("torch", "cpu", f"auto: exact, {n} points <= the CPU switch point AUTO_APPROX_ABOVE = "
                          "200000", False)
    for d in (256, 2048):
        choice = choose_backend("auto", 200_001, d, "cpu", "cpu")
        assert choice[:2] == ("approx", "cpu") and not choice.warn
        assert "200001 points > the CPU switch point AUTO_APPROX_ABOVE = 200000" in choice.reason
    choice = choose_backend("auto", 200_001, 256, "cpu", "none")  # no faiss: exact, with the threshold and a warning
    assert choice[:2] == ("torch", "cpu") and choice.warn and "AUTO_APPROX_ABOVE = 200000" in choice.reason
    assert choose_backend("torch", 10**6, 2048, "cpu", "cpu")[:2] == ("torch", "cpu")
    assert choose_backend("approx", 1000, 64, "cpu", "cpu")[:2] == ("approx", "cpu")
    assert choose_backend("faiss", 10**6, 2048, "cpu", "cpu")[:2] == ("faiss", "cpu")
    # on a GPU the CPU switch point does not apply, and faiss's GPU support does not change auto's choice
    for support in ("none", "cpu", "gpu"):
        assert choose_backend("auto", 10**6, 2048, "cuda", support)[:2] == ("torch", "cuda")


def test_faiss_without_gpu_support_warns_for_cuda_features(monkeypatch, caplog):
    choice = choose_backend("faiss", 1000, 64, "cuda", "cpu")
    assert choice.backend == "faiss" and choice.device == "cpu" and choice.warn
    assert "faiss has no GPU support (faiss-cpu installed)" in choice.reason
    assert "mqreid[faiss-gpu]" in choice.reason and "knn=torch" in choice.reason
    assert choose_backend("faiss", 1000, 64, "cuda", "gpu") == ("faiss", "cuda", "exact: faiss GPU IndexFlatIP", False)
    assert not choose_backend("faiss", 1000, 64, "cpu", "cpu").warn
    monkeypatch.setattr(knn_module, "_faiss_support", lambda: "cpu")
    with caplog.at_level(logging.INFO, logger="mqreid.cluster.knn"):
        resolve_backend("faiss", 1000, 64, "cuda")
        resolve_backend("auto", 10**6, 2048, "cuda")
    warning, info = caplog.records[-2:]
    assert warning.levelno == logging.WARNING and warning.getMessage().startswith(
        "kNN backend: faiss on cpu (exact: faiss has no GPU support (faiss-cpu installed)")
    assert info.levelno == logging.INFO and info.getMessage().startswith(
        "kNN backend: torch on cuda (auto: exact on the device, N^2 D = 2.0e+15 multiply-adds <= 1e+16)")
