import math

import pytest
import torch
import torch.nn.functional as F

from mqreid.memory import CentroidMemory, FixedTemperature, LearnableTemperature, MultiQueueMemory


def _data(n=40, d=8, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(n, d, generator=g), dim=1)
    labels = torch.arange(n) % c
    labels[:3] = -1
    return feats, labels


def test_centroid_init_fills_queue_with_centroid():
    feats, labels = _data()
    mem = MultiQueueMemory(8, 5, queue_size=4, init="centroid")
    mem.reset(feats, labels)
    for c in range(5):
        expected = F.normalize(feats[labels == c].mean(0), dim=0)
        assert torch.allclose(mem.queues[c], expected.expand(4, -1), atol=1e-6)


def test_members_init_draws_only_members():
    feats, labels = _data()
    torch.manual_seed(0)
    mem = MultiQueueMemory(8, 5, queue_size=6, init="members")
    mem.reset(feats, labels)
    for c in range(5):
        members = feats[labels == c]
        for q in mem.queues[c]:
            assert torch.isclose(members @ q, torch.tensor(1.0), atol=1e-5).any()


def test_ring_buffer_update_matches_loop():
    torch.manual_seed(1)
    c, q, d = 4, 3, 6
    mem = MultiQueueMemory(d, c, queue_size=q)
    mem.reset(*(_data(20, d, c)))
    ref_q, ref_ptr = mem.queues.clone(), mem.ptr.clone()
    for step in range(3):
        labels = torch.tensor([0, 0, 1, 3, 0, 0, 0, 3, 1])  # cluster 0 overflows its 3 slots
        feats = F.normalize(torch.randn(len(labels), d), dim=1)
        mem.update(feats, labels)
        for f, y in zip(feats, labels.tolist()):  # the sequential definition
            ref_q[y, ref_ptr[y]] = f
            ref_ptr[y] = (ref_ptr[y] + 1) % q
        assert torch.allclose(mem.queues, ref_q) and torch.equal(mem.ptr, ref_ptr)


def test_random_proxy_is_a_queue_entry_and_mean_proxy():
    feats, labels = _data()
    mem = MultiQueueMemory(8, 5, queue_size=4, init="members")
    mem.reset(feats, labels)
    p = mem.proxies()
    assert p.shape == (5, 8)
    for c in range(5):
        assert (mem.queues[c] == p[c]).all(1).any()
    mem.proxy = "mean"
    assert torch.allclose(mem.proxies(), F.normalize(mem.queues.mean(1), dim=1))


def test_loss_is_cross_entropy_over_scaled_similarities():
    feats, labels = _data()
    mem = CentroidMemory(8, 5)
    mem.reset(feats, labels)
    f, y = feats[3:13], labels[3:13]
    loss = mem(f, y, 0.05)
    logits = f @ mem.features.t() / 0.05
    manual = -torch.log_softmax(logits, 1)[torch.arange(10), y].mean()
    assert torch.isclose(loss, manual, atol=1e-5)


def test_centroid_momentum_update_matches_loop():
    feats, labels = _data()
    mem = CentroidMemory(8, 5, momentum=0.1)
    mem.reset(feats, labels)
    ref = mem.features.clone()
    x = F.normalize(torch.randn(12, 8), dim=1)
    y = torch.tensor([2, 2, 0, 4, 2, 0, 1, 1, 2, 3, 3, 0])
    mem.update(x, y)
    for xi, yi in zip(x, y.tolist()):
        ref[yi] = F.normalize(0.1 * ref[yi] + 0.9 * xi, dim=0)
    assert torch.allclose(mem.features, ref, atol=1e-6)


def test_centroid_hard_update_uses_least_similar_sample():
    feats, labels = _data()
    mem = CentroidMemory(8, 5, momentum=0.2, hard=True)
    mem.reset(feats, labels)
    ref = mem.features.clone()
    x = F.normalize(torch.randn(8, 8), dim=1)
    y = torch.tensor([1, 1, 1, 4, 4, 0, 1, 4])
    mem.update(x, y)
    for c in set(y.tolist()):
        idx = [i for i in range(8) if y[i] == c]
        hardest = min(idx, key=lambda i: float(x[i] @ ref[c]))
        ref[c] = F.normalize(0.2 * ref[c] + 0.8 * x[hardest], dim=0)
    assert torch.allclose(mem.features, ref, atol=1e-6)


def test_bad_inputs_name_the_problem():
    mem = MultiQueueMemory(8, 5)
    with pytest.raises(ValueError, match="features must be"):
        mem.update(torch.randn(3, 7), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie"):
        mem.update(torch.randn(3, 8), torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="memory.init"):
        MultiQueueMemory(8, 5, init="bogus")


def test_temperatures():
    assert float(FixedTemperature(0.05)()) == pytest.approx(0.05)
    t = LearnableTemperature(0.05, tlr=0.01)
    assert t().item() == pytest.approx(0.05)
    opt = torch.optim.SGD(t.parameters(), lr=100.0)
    (t() * 10).backward()  # push the temperature down hard: it must stay positive
    opt.step()
    assert t().item() > 0 and math.isfinite(t().item())
    with pytest.raises(ValueError, match="temp.init"):
        LearnableTemperature(-1)
