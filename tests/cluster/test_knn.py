"""Exact kNN: backends agree with a brute-force loop, ties are ordered, faiss is optional."""

import builtins
import logging

import numpy as np
import pytest
import torch

from mqreid.cluster import knn_search
from mqreid.cluster.knn import resolve_backend


def unit(n, d=8, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(x, base, k, self_search):
    s = x.astype(np.float64) @ base.T.astype(np.float64)
    idx = np.array([sorted(range(len(base)), key=lambda j: (-s[i, j], not (self_search and j == i), j))[:k]
                    for i in range(len(x))])
    return idx


def require(backend):
    if backend == "faiss":
        pytest.importorskip("faiss")


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_matches_brute_force(backend):
    require(backend)
    x = unit(70)
    sims, idx = knn_search(x, 9, backend=backend, block_size=16)  # several blocks, ragged last one
    assert sims.dtype == np.float32 and idx.dtype == np.int64 and idx.shape == (70, 9)
    assert np.array_equal(idx, brute_force(x, x, 9, True))
    assert np.allclose(sims, np.take_along_axis(x @ x.T, idx, 1), atol=1e-6)
    assert np.array_equal(idx[:, 0], np.arange(70))


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_query_against_base(backend):
    require(backend)
    q, base = unit(13, seed=1), unit(40, seed=2)
    _, idx = knn_search(q, 5, base=base, backend=backend, block_size=8)
    assert np.array_equal(idx, brute_force(q, base, 5, False))


def test_exclude_self():
    x = unit(30)
    _, idx = knn_search(x, 4, exclude_self=True, backend="torch")
    assert not (idx == np.arange(30)[:, None]).any()
    assert np.array_equal(idx, brute_force(x, x, 5, True)[:, 1:])


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_ties_self_first_then_lower_index(backend):
    require(backend)
    x = np.repeat(unit(3), 4, axis=0)  # 12 points, 3 groups of 4 identical ones
    _, idx = knn_search(x, 3, backend=backend, block_size=5)
    for i in range(12):
        group = [j for j in range(12) if j // 4 == i // 4]
        assert idx[i, 0] == i
        assert list(idx[i, 1:]) == [j for j in group if j != i][:2]


def test_k_clamped_and_cuda_agnostic_tensor_input():
    x = torch.from_numpy(unit(5))
    _, idx = knn_search(x, 50, backend="torch")
    assert idx.shape == (5, 5)
    _, idx = knn_search(x, 50, exclude_self=True, backend="torch")
    assert idx.shape == (5, 4)


def test_auto_falls_back_without_faiss(monkeypatch, caplog):
    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("faiss hidden")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with caplog.at_level(logging.INFO, logger="mqreid.cluster.knn"):
        assert resolve_backend("auto").backend == "torch"
        _, idx = knn_search(unit(20), 3)
    assert "torch" in caplog.text and idx.shape == (20, 3)
    with pytest.raises(ValueError, match="faiss"):
        knn_search(unit(20), 3, backend="faiss")


def test_validation():
    with pytest.raises(ValueError, match="backend"):
        knn_search(unit(5), 2, backend="annoy")
    with pytest.raises(ValueError, match="features"):
        knn_search(np.array([[1.0, np.inf]]), 1)
    with pytest.raises(ValueError, match="features"):
        knn_search(np.zeros((3, 2)), 1)
    with pytest.raises(ValueError, match="k"):
        knn_search(unit(5), 0)


def test_accelerator_candidates_on_the_cpu(monkeypatch):
    """The accelerator kernel (full-width GEMM panels + top-k, pure torch) run on CPU tensors through
    knn_search: same lists and tie order as brute force."""
    from mqreid.cluster import knn as knn_module

    def panels(xn, yn, m, block):
        return knn_module._device_candidates(torch.from_numpy(xn), None if yn is None else torch.from_numpy(yn), m, block)

    monkeypatch.setattr(knn_module, "_blocked_candidates", panels)
    x = unit(70)
    _, idx = knn_search(x, 9, backend="torch", block_size=16)
    assert np.array_equal(idx, brute_force(x, x, 9, True))
    q, base = unit(13, seed=1), unit(40, seed=2)
    assert np.array_equal(knn_search(q, 5, base=base, backend="torch", block_size=8)[1], brute_force(q, base, 5, False))
    dup = np.repeat(unit(3), 4, axis=0)  # ties across the cut are recomputed in the documented order
    _, idx = knn_search(dup, 3, backend="torch", block_size=5)
    assert all(idx[i, 0] == i and list(idx[i, 1:]) == [j for j in range(12) if j // 4 == i // 4 and j != i][:2]
               for i in range(12))
    sims, idx = knn_search(torch.from_numpy(x), 4, backend="torch", exclude_self=True, as_tensors=True)
    assert isinstance(idx, torch.Tensor) and idx.shape == (70, 4) and np.array_equal(idx.numpy(), brute_force(x, x, 5, True)[:, 1:])
