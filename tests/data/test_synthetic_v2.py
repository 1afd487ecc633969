"""Tests of the generator's v2 nuisances and of the byte-identity of the sets rendered without them
(tiny sizes; a few seconds in all)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mqreid.data.synthetic import Nuisances, Synthetic
from mqreid.data.synthetic import builder, camera, person, plan, rand, render
from mqreid.data.synthetic.nuisances import _nuisances

# Digests of every file (relative path and bytes) of three tiny sets, computed with the generator as it was
# before it became a package and before the v2 nuisances existed (Pillow 13.0.0, numpy 2.4.6). A different
# Pillow or libjpeg may encode the same pixels into other bytes: then compare against a rendering of that
# commit on the new versions before suspecting the generator.
PINNED = {
    "plain": (dict(num_train_ids=4, num_test_ids=3, num_cameras=3, images_per_id=(4, 6), num_distractors=2, height=32,
                   width=16, seed=3, camera_shift=0.3, noise=0.3, occlusion=0.1),
              "v1_ids4-3_d2_cam3_img4-6_32x16_shift0.3_noise0.3_occ0.1_seed3", 37,
              "163086df7c108f39963d47bfe3e275f8a7c5a3c4b6c87f8f39c077fa512ccd8a"),
    "sized": (dict(num_train_ids=5, num_test_ids=4, num_cameras=12, num_train_images=31, num_query=13, num_gallery=19,
                   num_distractors=3, height=32, width=16, seed=5),
              "v1_ids5-4_d3_cam12_n31-13-19_32x16_shift1.0_noise1.0_occ0.2_seed5", 66,
              "6cc3f21e42dac310b62d34b222c8f0ee47d4762529a13336471260204fa3541f"),
    "v1 nuisances": (dict(num_train_ids=5, num_test_ids=4, num_cameras=12, num_train_images=31, num_query=13,
                          num_gallery=19, num_distractors=3, height=32, width=16, seed=5, camera_shift=0.8, noise=0.5,
                          occlusion=0.2, nuisances=dict(time_slots=3, outfits=2, burst=4, lookalikes=0.5,
                                                        box_jitter=1.5, count_spread=1.0)),
                     "v1_ids5-4_d3_cam12_n31-13-19_32x16_shift0.8_noise0.5_occ0.2_seed5_ts3_of2_bu4_la0.5_bj1.5_cs1.0",
                     66, "b646cc65f421860110cccbf0f9b8e826a3f3283b9185fb13e814d9225515eb78"),
}


def digest(folder: Path) -> tuple[str, int]:
    """sha256 over every file's relative path and bytes, in path order; and the number of JPEG files."""
    h, n = hashlib.sha256(), 0
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
            n += p.suffix == ".jpg"
    return h.hexdigest(), n


@pytest.mark.parametrize("name", PINNED)
def test_sets_without_v2_nuisances_are_byte_identical_to_the_pinned_renderings(tmp_path, name):
    params, folder, count, expected = PINNED[name]
    ds = Synthetic(tmp_path, verbose=False, **params)
    assert Path(ds.root).name == folder
    assert digest(Path(ds.root)) == (expected, count)


def test_v2_nuisances_at_their_defaults_are_the_plain_generator(tmp_path):
    params, folder, count, expected = PINNED["sized"]
    neutral = dict(groups=[], group_gap=0.0, sessions=1, session_stay=1.0, shadows=0.0, exposure=0.0,
                   low_light_noise=0.0, walk=0, cross_group=0.0, background_pool=0)
    ds = Synthetic(tmp_path, verbose=False, **params, nuisances=neutral)
    assert Path(ds.root).name == folder and digest(Path(ds.root)) == (expected, count)
    assert not Nuisances().v2 and Nuisances(walk=1).v2 and Nuisances().tag() == ""
    assert Nuisances(groups=(12, 3), walk=2).tag() == "_gr12-3_wk2"


# every v2 nuisance on, on a tiny sized set of 12 cameras in two groups
V2 = dict(PINNED["sized"][0], nuisances=dict(groups=[8, 4], group_gap=1.0, sessions=4, session_stay=0.8, shadows=0.5,
                                             exposure=0.4, low_light_noise=2.0, walk=1, cross_group=0.1,
                                             background_pool=3, burst=3))


def test_v2_sets_are_deterministic_named_by_their_nuisances_and_worker_independent(tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "_JOB_IMAGES", 6)
    one = Synthetic(tmp_path / "one", verbose=False, workers=1, **V2)
    two = Synthetic(tmp_path / "two", verbose=False, workers=2, **V2)
    assert Path(one.root).name.endswith("_bu3_gr8-4_gg1.0_se4_sh0.8_sd0.5_ex0.4_ln2.0_wk1_xg0.1_bp3")
    files = files_of(Path(one.root))
    assert files == files_of(Path(two.root))
    assert len(files) == 31 + 13 + 19 + 3
    assert (len(one.train), len(one.query), len(one.gallery)) == (31, 13, 22)  # the split sizes stay exact


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_walks_stay_on_linked_cameras_of_one_group_and_rarely_cross():
    group_of = plan._camera_groups(15, (12, 3))
    assert group_of == [0] * 12 + [1] * 3
    def ring_distance(a, b):  # a and b in one group: cameras 0-11 and 12-14 stand on rings
        size, a, b = (12, a, b) if a < 12 else (3, a - 12, b - 12)
        return min(abs(a - b), size - abs(a - b))

    for seed in range(100):  # without moves between groups: one group, each camera linked to an earlier one
        path = plan._walk_cameras(np.random.default_rng(seed), 3, group_of, 1, 0.0)
        assert len(set(path)) == 3 and len({group_of[c] for c in path}) == 1
        for i, cam in enumerate(path[1:], 1):
            assert any(ring_distance(cam, prev) <= 1 for prev in path[:i])
    assert sorted(plan._walk_cameras(np.random.default_rng(0), 15, group_of, 2, 0.05)) == list(range(15))

    def crossing(walk):  # share of identities seen in both groups
        steps = plan._plan_set(num_train_ids=300, num_test_ids=1, num_cameras=15, images_per_id=(8, 20),
                               num_train_images=None, num_query=None, num_gallery=None, seed=0,
                               nuisances=Nuisances(groups=(12, 3), walk=walk, cross_group=0.05))
        return np.mean([len({group_of[c] for _, c, _ in images}) > 1 for _, images in steps])

    assert crossing(walk=2) < 0.25 < 0.6 < crossing(walk=0)  # at random, most identities span both groups


def test_groups_must_add_up_to_the_cameras(tmp_path):
    with pytest.raises(ValueError, match=r"nuisances\.groups must add up to num_cameras \(12\), got \[8, 3\]"):
        Synthetic(tmp_path, verbose=False, **{**V2, "nuisances": dict(groups=[8, 3])})
    with pytest.raises(ValueError, match=r"nuisances\.groups must be a list of camera counts >= 1"):
        Synthetic(tmp_path, verbose=False, **{**V2, "nuisances": dict(groups=[12, 0])})
    with pytest.raises(ValueError, match=r"nuisances\.session_stay must be in \[0, 1\], got 1\.5"):
        Synthetic(tmp_path, verbose=False, **{**V2, "nuisances": dict(session_stay=1.5)})
    assert not (tmp_path / "synthetic").exists()


@pytest.fixture(scope="module")
def renderer(tmp_path_factory) -> render._Renderer:
    params = dict(V2, camera_shift=1.0, noise=1.0, occlusion=0.2)
    params["nuisances"] = _nuisances(params["nuisances"])
    return render._Renderer(tmp_path_factory.mktemp("out"), **params)


def test_sessions_are_shared_by_a_groups_cameras_and_identities_stay_in_their_home_session(renderer):
    def session_light(cam, session):  # the colour change a session makes to a camera's own colour model
        return renderer.camera(cam, 0, session).colour_matrix @ np.linalg.inv(renderer.camera(cam).colour_matrix)

    assert np.allclose(session_light(0, 2), session_light(7, 2), atol=1e-4)  # cameras 1 and 8: group 0
    assert np.allclose(session_light(8, 2), session_light(11, 2), atol=1e-4)  # cameras 9 and 12: group 1
    assert not np.allclose(session_light(0, 2), session_light(8, 2), atol=1e-2)
    assert not np.allclose(session_light(0, 1), session_light(0, 2), atol=1e-2)
    rng = np.random.default_rng(0)
    sessions = [renderer.setting(rng, 0, home=3)["session"] for _ in range(2000)]
    assert abs(np.mean(np.equal(sessions, 3)) - 0.8) < 0.04 and set(sessions) == set(range(4))


def test_backgrounds_come_from_the_groups_pool(renderer):
    assert renderer.camera(0, background=2).background is renderer.camera(7, background=2).background
    assert renderer.camera(0, background=2).background is not renderer.camera(0, background=1).background
    group_1 = {id(renderer.camera(8, background=b).background) for b in range(3)}
    assert not group_1 & {id(renderer.camera(0, background=b).background) for b in range(3)}
    rng = np.random.default_rng(0)
    assert {renderer.setting(rng, 0, home=0)["background"] for _ in range(50)} == {0, 1, 2}


def test_groups_have_their_own_sensor_and_view_prior(renderer):
    plain = render._Renderer(Path("unused"), **dict(V2, camera_shift=1.0, noise=1.0, occlusion=0.2,
                                                    nuisances=Nuisances(groups=(8, 4))))
    factor = [renderer.camera(c).noise / plain.camera(c).noise for c in range(12)]
    assert np.allclose(factor[:8], factor[0]) and np.allclose(factor[8:], factor[8]) and factor[0] != factor[8]
    assert all(np.isclose(renderer.camera(c).view_p.sum(), 1) for c in range(12))


def test_lighting_is_not_a_global_colour_transform():
    """A shadow darkens part of the image and leaves the rest; a high light level clips; low light adds noise."""
    ident = person._make_identity(rand._rng(0, rand._STREAM_ID, 1))
    cam = camera._make_camera(rand._rng(0, rand._STREAM_CAM, 0), camera._scene_colours(rand._rng(0, 5)), 64, 32,
                              0.3, 0.0)  # no noise, blur or resolution loss: pixels compare exactly
    cam = replace(cam, blur=0.0, resolution=1.0, noise=0.0, black=0.0, white=1.0)  # a clipped value is 255

    def image(lighting=None, model=cam):
        return render._render(ident, model, rand._rng(7), 64, 32, 0.0, lighting=lighting).astype(float)

    base = image()
    assert np.array_equal(base, image(render._Lighting()))  # the neutral lighting changes nothing
    shadowed = image(render._Lighting(shadow=(0, 0.0, 0.0, 0.5, 0.02)))  # vertical edge through the centre
    same, darker = np.all(shadowed == base, axis=2), np.all(shadowed < base - 5, axis=2)
    assert same[:, :12].mean() > 0.9 and darker[:, 20:].mean() > 0.5  # one side untouched, the other dark
    clipped = lambda img: np.mean(img >= 254)  # noqa: E731
    assert clipped(image(render._Lighting(level=2.5))) > clipped(base) + 0.1
    noisy = replace(cam, noise=0.02)
    dim = [np.abs(image(render._Lighting(level=0.5, noise_gain=g), noisy) - image(render._Lighting(level=0.5)))
           .mean() for g in (1.0, 3.0)]
    assert dim[1] > 2 * dim[0] > 0


@pytest.mark.parametrize("name", ["synthetic_v2", "synthetic_v2_hard"])
def test_v2_configs_train_the_presets_method_and_leave_the_default_alone(name):
    from conftest import compose_config

    cfg = compose_config([f"dataset={name}"])
    assert cfg.dataset.name == name and cfg.backbone.arch == "small_cnn" and cfg.backbone.pretrained == "synthetic"
    assert cfg.input.color_jitter == 0.0 and not cfg.train.camera_centering  # the presets' augmentation, no centring
    default = compose_config([])
    assert default.dataset.name == "synthetic" and default.input.color_jitter == 0.4 and default.train.camera_centering
