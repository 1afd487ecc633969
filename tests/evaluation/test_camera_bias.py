"""The camera-bias statistics of the v2 calibration, against explicit loops and on fabricated features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mqreid.cluster.camera import camera_centering
from mqreid.evaluation.camera_bias import (camera_knn_vote, camera_probe, camera_recall,
                                           wrong_identity_camera_excess)


def fabricated(seed: int, offset: float, ids: int = 40, per_id: int = 8, cams: int = 4, dim: int = 32):
    """Identities as Gaussian clusters seen on random cameras; ``offset``: size of a per-camera shift."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(ids), per_id)
    cameras = rng.integers(0, cams, len(pids))
    centres, shifts = rng.normal(size=(ids, dim)), rng.normal(size=(cams, dim))
    x = centres[pids] + 0.6 * rng.normal(size=(len(pids), dim)) + offset * shifts[cameras]
    return x.astype(np.float32), pids, cameras


def loop_statistics(x, pids, cameras, k):
    """S2 and S3 image by image, with numpy and Python loops."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n, excess, same_r, cross_r = len(x), [], [], []
    for i in range(n):
        sims = x @ x[i]
        others = [j for j in range(n) if pids[j] != pids[i]]
        top = sorted(others, key=lambda j: -sims[j])[:k]
        chance = np.mean([cameras[j] == cameras[i] for j in others])
        excess.append(np.mean([cameras[j] == cameras[i] for j in top]) - chance)
        for kind, out in ((True, same_r), (False, cross_r)):
            matches = [j for j in range(n) if j != i and pids[j] == pids[i] and (cameras[j] == cameras[i]) == kind]
            if matches:
                found = [sum(sims[o] > sims[j] for o in others) < k for j in matches]
                out.append(np.mean(found))
    return np.mean(excess), np.mean(same_r), np.mean(cross_r)


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_excess_and_recall_match_an_explicit_loop(offset):
    x, pids, cameras = fabricated(0, offset, ids=12, per_id=6)
    excess, same, cross = loop_statistics(x, pids, cameras, k=5)
    assert wrong_identity_camera_excess(x, pids, cameras, k=5) == pytest.approx(excess, abs=1e-9)
    recall = camera_recall(x, pids, cameras, k=5)
    assert (recall["same"], recall["cross"]) == (pytest.approx(same, abs=1e-9), pytest.approx(cross, abs=1e-9))
    assert recall["gap"] == pytest.approx(same - cross, abs=1e-9)


def test_a_camera_offset_shows_and_centring_removes_it():
    plain, offset = fabricated(1, 0.0), fabricated(1, 1.5)
    assert abs(wrong_identity_camera_excess(*plain)) < 0.05 and abs(camera_recall(*plain)["gap"]) < 0.05
    assert wrong_identity_camera_excess(*offset) > 0.4 and camera_recall(*offset)["gap"] > 0.2
    x, pids, cameras = offset
    centred = camera_centering(torch.from_numpy(x), torch.from_numpy(cameras))
    assert camera_recall(centred, pids, cameras)["gap"] < 0.1 * camera_recall(*offset)["gap"] + 0.02
    assert camera_probe(*offset)["kappa"] > 0.9
    assert abs(camera_probe(*offset, centre=True)["kappa"]) < 0.15  # the offset is all there was: gone
    assert abs(camera_probe(*plain)["kappa"]) < 0.15


def test_a_linear_probe_after_centring_sees_no_camera_effect_that_only_some_identities_carry():
    """After exact per-camera centring every camera's mean is about zero, so a linear probe is near chance even
    when half the identities carry a camera shift; the nearest impostors (S2 on centred features) still show it.
    The fold-wise means do not push held-out identities below chance."""
    x, pids, cameras = fabricated(3, 0.0, ids=60, cams=3)
    rng = np.random.default_rng(3)
    x = x + 2.0 * rng.normal(size=(3, x.shape[1]))[cameras] * (pids % 2 == 0)[:, None]  # only even ids shifted
    assert abs(camera_probe(x, pids, cameras, centre=True)["kappa"]) < 0.15
    centred = camera_centering(torch.from_numpy(x), torch.from_numpy(cameras))
    assert wrong_identity_camera_excess(centred, pids, cameras) > 0.2
    assert camera_probe(*fabricated(4, 0.0, ids=30, cams=4), centre=True)["kappa"] > -0.15


def test_bad_shapes_and_too_few_identities_are_named():
    x, pids, cameras = fabricated(2, 0.0)
    with pytest.raises(ValueError, match=r"expected features \[N, D\], pids \[N\] and cameras \[N\]"):
        camera_recall(x, pids[:-1], cameras)
    with pytest.raises(ValueError, match=r"camera_probe: needs >= 2 cameras and >= 5 identities"):
        camera_probe(x[:16], pids[:16], cameras[:16])


def transformed(seed: int, kind: str, ids: int = 40, per_id: int = 8, cams: int = 4, dim: int = 32,
                one_camera: bool = False):
    """Identities as Gaussian clusters; each camera applies ``kind``: "none", "offset" (a constant shift),
    "scale" (a per-dimension scaling) or "rotate" (a rotation of identities that span 4 dimensions).
    ``one_camera``: each identity is seen on one camera only (identity and camera confounded)."""
    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(ids), per_id)
    cameras = rng.integers(0, cams, ids)[pids] if one_camera else rng.integers(0, cams, len(pids))
    basis = rng.normal(size=(4, dim)) if kind == "rotate" else np.eye(dim)
    x = (rng.normal(size=(ids, len(basis))) @ basis)[pids] + 0.6 * rng.normal(size=(len(pids), dim))
    if kind == "offset":
        x = x + 1.5 * rng.normal(size=(cams, dim))[cameras]
    elif kind == "scale":
        x = x * np.exp(0.7 * rng.normal(size=(cams, dim)))[cameras]
    elif kind == "rotate":
        rotations = np.stack([np.linalg.qr(rng.normal(size=(dim, dim)))[0] for _ in range(cams)])
        x = np.einsum("nij,nj->ni", rotations[cameras], x)
    return x.astype(np.float32), pids, cameras


def loop_knn_vote(x, pids, cameras, k, centre):
    """S5 image by image: centring with the other identities' camera means, the k nearest images of other
    identities, their majority vote (ties: the most similar voter's camera), balanced accuracy."""
    x = x.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # features are compared (and centred) L2-normalised
    cams = sorted(set(cameras.tolist()))
    predicted = []
    for i in range(len(x)):
        y = x.copy()
        if centre:
            for cam in cams:
                others = (cameras == cam) & (pids != pids[i])
                if others.any():
                    y[cameras == cam] -= x[others].mean(0)
        y /= np.linalg.norm(y, axis=1, keepdims=True)
        candidates = [j for j in range(len(x)) if pids[j] != pids[i]]
        top = sorted(candidates, key=lambda j: -(y[i] @ y[j]))[:k]
        votes = {cam: sum(cameras[j] == cam for j in top) for cam in cams}
        best = max(votes.values())
        predicted.append(next(cameras[j] for j in top if votes[cameras[j]] == best))
    predicted = np.array(predicted)
    accuracy = np.mean([np.mean(predicted[cameras == cam] == cam) for cam in cams])
    return (accuracy - 1 / len(cams)) / (1 - 1 / len(cams))


@pytest.mark.parametrize("kind", ["offset", "scale"])
@pytest.mark.parametrize("centre", [False, True])
def test_knn_vote_matches_an_explicit_loop(kind, centre):
    x, pids, cameras = transformed(5, kind, ids=12, per_id=5, cams=3, dim=8)
    expected = loop_knn_vote(x, pids, cameras, k=5, centre=centre)
    assert camera_knn_vote(x, pids, cameras, k=5, centre=centre)["kappa"] == pytest.approx(expected, abs=1e-9)


def test_knn_vote_sees_what_a_constant_offset_cannot_carry():
    """A constant camera offset: plain before centring, chance after. A camera-dependent scaling or rotation:
    still plain after centring, where the registered linear probe (S5-linear) is near chance."""
    offset = transformed(1, "offset")
    assert camera_knn_vote(*offset)["kappa"] > 0.9
    assert abs(camera_knn_vote(*offset, centre=True)["kappa"]) < 0.1
    assert abs(camera_knn_vote(*transformed(1, "none"), centre=True)["kappa"]) < 0.1
    for kind in ("scale", "rotate"):
        features = transformed(1, kind)
        assert camera_knn_vote(*features, centre=True)["kappa"] > 0.5, kind
        assert camera_probe(*features, centre=True)["kappa"] < 0.2, kind


def test_knn_vote_does_not_read_the_cameras_an_identity_visits():
    """Each identity on one camera and no camera effect in the features: a vote that counted the image's own
    identity would name its camera; leaving the identity out (voters and camera means) stays near chance,
    where centring with means over all images reads below chance."""
    x, pids, cameras = transformed(2, "none", ids=60, per_id=10, cams=6, one_camera=True)
    y = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = y @ y.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :15]
    with_identity = [np.bincount(cameras[row], minlength=6).argmax() for row in top]
    assert np.mean(with_identity == cameras) > 0.5  # what the identity's own images would give
    kappa = camera_knn_vote(x, pids, cameras, centre=True)["kappa"]
    assert abs(kappa) < 0.06
    all_means = camera_centering(torch.from_numpy(x), torch.from_numpy(cameras))
    assert camera_knn_vote(all_means, pids, cameras)["kappa"] < kappa - 0.08


def test_knn_vote_names_bad_input():
    x, pids, cameras = transformed(2, "none")
    with pytest.raises(ValueError, match=r"camera_knn_vote: needs >= 2 cameras and >= 2 identities, got 1 and"):
        camera_knn_vote(x, pids, np.zeros_like(cameras))
    with pytest.raises(ValueError, match=r"expected features \[N, D\], pids \[N\] and cameras \[N\]"):
        camera_knn_vote(x, pids[:-1], cameras)
