
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


@pytest.mark.parametrize("init", ["centroid", "centroid_normalized"])
def test_centroid_init_fills_queue_with_the_cluster_mean(init):
    feats, labels = _data()
    mem = MultiQueueMemory(8, 5, queue_size=4, init=init)
    mem.reset(feats, labels)
    for c in range(5):
        mean = feats[labels == c].mean(0)  # the original keeps the plain mean: its norm is below 1
        expected = F.normalize(mean, dim=0) if init == "centroid_normalized" else mean
        assert torch.allclose(mem.queues[c], expected.expand(4, -1), atol=1e-6)
    if init == "centroid":
        assert (mem.queues.norm(dim=2) < 0.999).all()


def test_random_draws_come_from_the_memory_seed_not_the_global_rng():
    feats, labels = _data()
    draws = []
    for noise in (0, 1):
        torch.manual_seed(noise)  # a different global RNG state must not matter
        mem = MultiQueueMemory(8, 5, queue_size=6, init="members", seed=7)
        mem.reset(feats, labels)
        draws.append((mem.queues.clone(), mem.proxies(), mem.proxies()))
    for a, b in zip(*draws):
        assert torch.equal(a, b)
    other = MultiQueueMemory(8, 5, queue_size=6, init="members", seed=8)
    other.reset(feats, labels)
    assert not torch.equal(other.queues, draws[0][0])


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
    t = LearnableTemperature(0.05, tlr=0.01, floor=1e-3)
    assert t().item() == pytest.approx(0.05)
    opt = torch.optim.SGD(t.parameters(), lr=100.0)
    (t() * 10).backward()  # push the temperature down hard: the floor keeps it positive
    opt.step()
    t.constrain_()
    assert t().item() == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="temp.init"):
        LearnableTemperature(-1)
    with pytest.raises(ValueError, match="temp.floor"):
        LearnableTemperature(0.05, floor=0)


def test_learnable_temperature_follows_a_raw_parameter_under_adam_and_steplr():
    """T's trajectory equals a plain raw-parameter reference (the original's nn.Parameter(0.05) in an Adam
    group at lr x tlr with weight decay 5e-4, decayed by StepLR) for the same gradients, and moves by about
    lr x tlr = 3.5e-6 per step."""
    lr, wd, steps = 3.5e-4, 5e-4, 300
    t = LearnableTemperature(0.05, tlr=0.01)
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([{"params": [w]}, t.param_group(lr, wd)], lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.1)
    ref = torch.nn.Parameter(torch.tensor(0.05))
    ref_opt = torch.optim.Adam([ref], lr=lr * 0.01, weight_decay=wd)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=10, gamma=0.1)
    g = torch.Generator().manual_seed(0)
    trajectory, reference = [], []
    for step in range(steps):
        grad = 1.0 + 0.5 * torch.randn((), generator=g)  # a loss that prefers a lower temperature
        for p, o in ((t.temperature, opt), (ref, ref_opt)):
            o.zero_grad()
            (p * grad).backward()
            o.step()
        t.constrain_()
        if step % 10 == 9:  # "epochs" of 10 steps for the schedule
            sched.step()
            ref_sched.step()
        trajectory.append(t().item())
        reference.append(ref.item())
    assert trajectory == pytest.approx(reference, abs=1e-9)
    first = 0.05 - trajectory[9]  # 10 steps at the full rate
    assert first == pytest.approx(10 * 3.5e-6, rel=0.3)
    assert opt.param_groups[1]["weight_decay"] == wd and opt.param_groups[1]["lr"] == pytest.approx(lr * 0.01 * 0.1 ** 3)


@pytest.mark.parametrize("bound", [None, 4, 9])  # None: read from the labels; any bound >= the largest count
def test_centroid_update_with_a_host_bound_matches_loop(bound):
    feats, labels = _data()
    mem = CentroidMemory(8, 5, momentum=0.3)
    mem.reset(feats, labels)
    ref = mem.features.clone()
    x = F.normalize(torch.randn(10, 8), dim=1)
    y = torch.tensor([3, 3, 1, 3, 0, 3, 1, 0, 0, 1])  # cluster 3: 4 samples; cluster 2 and 4: none
    mem.update(x, y, max_per_cluster=bound)
    for xi, yi in zip(x, y.tolist()):
        ref[yi] = F.normalize(0.3 * ref[yi] + 0.7 * xi, dim=0)
    assert torch.allclose(mem.features, ref, atol=1e-6)
    assert torch.equal(mem.features[[2, 4]], ref[[2, 4]])  # untouched clusters keep their exact values


def test_centroid_update_of_an_empty_batch_changes_nothing():
    feats, labels = _data()
    for hard in (False, True):
        mem = CentroidMemory(8, 5, hard=hard)
        mem.reset(feats, labels)
        before = mem.features.clone()
        mem.update(torch.empty(0, 8), torch.empty(0, dtype=torch.long), max_per_cluster=0)
        assert torch.equal(mem.features, before)
