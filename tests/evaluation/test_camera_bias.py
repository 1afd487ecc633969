"""The camera-bias statistics of the v2 calibration, against explicit loops and on fabricated features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mqreid.cluster.camera import camera_centering
from mqreid.evaluation.camera_bias import camera_probe, camera_recall, wrong_identity_camera_excess


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
