"""bench/identity_picture.py: which images a row of an identity takes (one camera after another)."""

from __future__ import annotations

import importlib.util

from conftest import REPO
from mqreid.data.base import ImageItem

spec = importlib.util.spec_from_file_location("identity_picture", REPO / "bench" / "identity_picture.py")
picture = importlib.util.module_from_spec(spec)
spec.loader.exec_module(picture)


def test_rows_take_one_image_per_camera_in_turn():
    # id 1: cameras 0 (3 images), 1 (1), 2 (2), 3 (1), 4 (1); id 2: cameras 0-3, one image each; id 3: camera 0 only
    cams = {1: [0, 0, 0, 1, 2, 2, 3, 4], 2: [0, 1, 2, 3], 3: [0, 0, 0, 0, 0]}
    train = [ImageItem(f"{pid}_{k}.jpg", pid, cam) for pid, cs in cams.items() for k, cam in enumerate(cs)]
    picked = picture.pick(train, ids=5, per_id=6, seed=0)
    rows = {pid: [train[i].camid for i in idx] for pid, idx in picked.items()}
    assert set(rows) == {1, 2}  # id 3 is seen by one camera: never drawn
    assert rows[1] == [0, 1, 2, 3, 4, 0] and rows[2] == [0, 1, 2, 3]
    assert [train[i].path for i in picked[1]] == ["1_0.jpg", "1_3.jpg", "1_4.jpg", "1_6.jpg", "1_7.jpg", "1_1.jpg"]
    assert all(train[i].pid == pid for pid, idx in picked.items() for i in idx)
