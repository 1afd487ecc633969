"""Tests of the generator's v2 nuisances and of the byte-identity of the sets rendered without them
(tiny sizes; a few seconds in all)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mqreid.data.synthetic import Synthetic

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
