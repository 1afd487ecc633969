"""Camera-aware proxies: the two loss terms against an explicit loop over the batch's cameras and samples (the
authors' form), the proxies' construction and momentum update, and the edge cases (a camera with one image, a
cluster seen in one camera, fewer negatives than asked for)."""

import math

import pytest
import torch
import torch.nn.functional as F

from mqreid.memory import CameraProxies, camera_proxy_losses


def loop_losses(features, labels, cameras, proxies, proxy_labels, proxy_cameras, temperature, hard):
    """Per camera of the batch: the mean over its samples of each term, summed over cameras."""
    f = F.normalize(features.double(), dim=1)
    p = proxies.double()
    intra_total, inter_total = 0.0, 0.0
    for cam in sorted(set(cameras.tolist())):
        rows = [i for i in range(len(f)) if cameras[i] == cam]
        intra_sum, inter_sum = 0.0, 0.0
        for i in rows:
            own_cam = [j for j in range(len(p)) if proxy_cameras[j] == cam]
            logits = [float(f[i] @ p[j]) / temperature for j in own_cam]
            target = [k for k, j in enumerate(own_cam) if proxy_labels[j] == labels[i]]
            assert len(target) == 1
            intra_sum += -(logits[target[0]] - math.log(sum(math.exp(v) for v in logits)))
            positives = [j for j in range(len(p)) if proxy_labels[j] == labels[i]]
            others = sorted((j for j in range(len(p)) if proxy_labels[j] != labels[i]),
                            key=lambda j: -float(f[i] @ p[j]))[:hard]
            chosen = [float(f[i] @ p[j]) / temperature for j in positives + others]
            log_z = math.log(sum(math.exp(v) for v in chosen))
            inter_sum += sum(-(chosen[k] - log_z) / len(positives) for k in range(len(positives)))
        intra_total += intra_sum / len(rows)
        inter_total += inter_sum / len(rows)
    return intra_total, inter_total


def fabricated(seed=0, clusters=6, cameras=4, batch=24, dim=8):
    g = torch.Generator().manual_seed(seed)
    pairs = [(c, k) for c in range(clusters) for k in range(cameras) if (c + k) % 3 != 0]  # not every pair
    proxies = F.normalize(torch.randn(len(pairs), dim, generator=g), dim=1)
    proxy_labels = torch.tensor([c for c, _ in pairs])
    proxy_cameras = torch.tensor([k for _, k in pairs])
    pick = torch.randint(len(pairs), (batch,), generator=g)
    return (torch.randn(batch, dim, generator=g), proxy_labels[pick], proxy_cameras[pick], proxies, proxy_labels,
            proxy_cameras)


@pytest.mark.parametrize("hard", [50, 3, 0])
def test_losses_match_the_loop(hard):
    features, labels, cameras, proxies, proxy_labels, proxy_cameras = fabricated(seed=hard)
    intra, inter = camera_proxy_losses(features, labels, cameras, proxies, proxy_labels, proxy_cameras,
                                       temperature=0.07, hard_negatives=hard)
    ref_intra, ref_inter = loop_losses(features, labels, cameras, proxies, proxy_labels, proxy_cameras, 0.07, hard)
    assert abs(intra.item() - ref_intra) < 1e-4 * max(1.0, abs(ref_intra))
    assert abs(inter.item() - ref_inter) < 1e-4 * max(1.0, abs(ref_inter))


def test_gradients_reach_the_features_only():
    features, labels, cameras, proxies, proxy_labels, proxy_cameras = fabricated()
    features.requires_grad_(True)
    proxies.requires_grad_(True)
    intra, inter = camera_proxy_losses(features, labels, cameras, proxies, proxy_labels, proxy_cameras)
    (intra + inter).backward()
    assert features.grad is not None and torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    assert proxies.grad is None


def test_proxies_reset_and_update():
    """One proxy per (cluster, camera) pair with members, their normalised mean; the update is the centroid
    memory's momentum recursion on each sample's own proxy. A camera with one image and a cluster seen in one
    camera are ordinary proxies; outliers are left out."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 4, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, -1, 0])
    cams = torch.tensor([0, 1, 1, 0, 0, 0, 2, 2, 3, 5])  # camera 5: one image; cluster 1: camera 0 only
    cp = CameraProxies(num_features=4, momentum=0.2)
    cp.reset(x, labels, cams)
    pairs = list(zip(cp.proxy_labels.tolist(), cp.proxy_cameras.tolist()))
    assert pairs == [(0, 0), (0, 1), (0, 5), (1, 0), (2, 2)]
    assert torch.allclose(cp.proxies()[1], F.normalize(x[1:3].mean(0), dim=0), atol=1e-6)
    assert cp.proxy_index(labels[:8], cams[:8]).tolist() == [0, 1, 1, 3, 3, 3, 4, 4]
    before = cp.proxies().clone()
    batch = torch.randn(2, 4, generator=g)
    cp.update(batch, torch.tensor([0, 0]), torch.tensor([1, 1]), max_per_cluster=2)
    p = before[1]
    for row in batch:
        p = F.normalize(0.2 * p + 0.8 * F.normalize(row, dim=0), dim=0)
    assert torch.allclose(cp.proxies()[1], p, atol=1e-6)
    assert torch.equal(cp.proxies()[[0, 2, 3, 4]], before[[0, 2, 3, 4]])
    intra, inter = cp(torch.randn(3, 4, generator=g), torch.tensor([0, 1, 2]), torch.tensor([5, 0, 2]))
    assert torch.isfinite(intra) and torch.isfinite(inter)


def test_inter_term_off_before_its_epoch():
    cp = CameraProxies(num_features=4)
    assert not cp.inter_active(4) and cp.inter_active(5)
    cp.reset(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 1, 0]), torch.tensor([0, 1, 0, 1, 1, 0]))
    intra, inter = cp(torch.randn(2, 4), torch.tensor([0, 1]), torch.tensor([0, 1]), inter=False)
    assert inter is None and torch.isfinite(intra)


def test_bad_settings_and_shapes():
    with pytest.raises(ValueError, match="temperature=0: expected a number > 0"):
        CameraProxies(4, temperature=0)
    with pytest.raises(ValueError, match="momentum=1.5: expected a number in"):
        CameraProxies(4, momentum=1.5)
    with pytest.raises(ValueError, match="hard_negatives=-1: expected an integer >= 0"):
        CameraProxies(4, hard_negatives=-1)
    features, labels, cameras, proxies, proxy_labels, proxy_cameras = fabricated()
    with pytest.raises(ValueError, match="expected cameras of shape"):
        camera_proxy_losses(features, labels, cameras[:-1], proxies, proxy_labels, proxy_cameras)


def test_queues_per_cluster_and_camera():
    """queue_size: each (cluster, camera) pair keeps a ring buffer that starts as its normalised mean; the
    update writes each sample into its own pair's queue, and a proxy is one entry of its queue."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 4, generator=g)
    labels, cams = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0]), torch.tensor([0, 0, 1, 0, 1, 1, 1, 1])
    cp = CameraProxies(num_features=4, queue_size=3, seed=5)
    cp.reset(x, labels, cams)
    assert cp.num_proxies == 4
    mean = F.normalize(F.normalize(x[[0, 1]], dim=1).mean(0), dim=0)
    assert torch.allclose(cp.memory.queues[0], mean.expand(3, -1), atol=1e-6)
    batch = torch.randn(2, 4, generator=g)
    cp.update(batch, torch.tensor([1, 1]), torch.tensor([1, 1]), max_per_cluster=2)
    written = cp.memory.queues[cp.proxy_index(torch.tensor([1]), torch.tensor([1]))[0]]
    assert torch.allclose(written[:2], F.normalize(batch, dim=1), atol=1e-6)
    proxies = cp.proxies()
    assert proxies.shape == (4, 4)
    assert all(any(torch.allclose(proxies[p], q) for q in cp.memory.queues[p]) for p in range(4))
    intra, inter = cp(torch.randn(3, 4, generator=g), torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]))
    assert torch.isfinite(intra) and torch.isfinite(inter)
    with pytest.raises(ValueError, match="queue_size=0: expected null"):
        CameraProxies(4, queue_size=0)
