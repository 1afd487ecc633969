"""Ranked-list and cluster figures: query/cluster selection, the Market-1501 exclusion, small PNG files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from matplotlib.colors import to_rgba

from mqreid.visualize import (CORRECT, WRONG, average_precision, cluster_gallery_figure,
                              cluster_purity, filtered_ranking, image_rows_figure, ranked_list_figure, save_figure, select_clusters,
                              select_queries)


def make_images(folder, count, size=(64, 32), seed=0):
    """``count`` person-sized test images (gradient, blocks, mild noise) saved as JPEG files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    paths = []
    for i in range(count):
        img = np.linspace(0, 1, h)[:, None, None] * rng.uniform(0, 255, 3) + rng.uniform(0, 80, 3)
        img = np.broadcast_to(img, (h, w, 3)).copy()
        for _ in range(4):
            y, x = rng.integers(0, h - h // 4), rng.integers(0, w - w // 4)
            img[y:y + h // 4, x:x + w // 4] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 8, img.shape)
        paths.append(folder / f"{i:03d}.jpg")
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


# Gallery: (pid, camid); every query is seen by camera 0.
G_PIDS = np.array([1, 1, 2, 3, 2, 9])
G_CAMS = np.array([0, 1, 1, 0, 0, 2])
Q_PIDS = np.array([1, 2, 3, 9])
Q_CAMS = np.array([0, 0, 0, 0])
DIST = np.array([
    # g0    g1    g2    g3    g4    g5
    [0.00, 0.10, 0.50, 0.60, 0.90, 0.70],  # q0: g0 excluded, g1 correct first -> AP 1
    [0.11, 0.21, 0.41, 0.31, 0.01, 0.51],  # q1: g4 excluded, g2 correct 4th -> AP 0.25
    [0.12, 0.22, 0.32, 0.02, 0.92, 0.42],  # q2: g3 excluded, no other id 3 -> no valid match
    [0.13, 0.33, 0.43, 0.53, 0.93, 0.23],  # q3: g5 correct 2nd -> AP 0.5
])


def test_average_precision_and_filtered_ranking():
    ap = average_precision(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, chunk_size=3)
    assert ap[[0, 1, 3]].tolist() == [1.0, 0.25, 0.5] and math.isnan(ap[2])
    assert filtered_ranking(DIST[1], 2, 0, G_PIDS, G_CAMS).tolist() == [0, 1, 3, 2, 5]
    assert filtered_ranking(DIST[0], 1, 0, G_PIDS, G_CAMS).tolist() == [1, 2, 3, 5, 4]


def test_select_queries_takes_the_worst_the_best_and_random_ones():
    ap = np.array([0.5, 0.1, 0.9, np.nan, 0.3, 1.0, 0.7, 0.1])
    chosen = select_queries(ap, 6, seed=0)
    assert chosen[:4] == [(1, "worst"), (7, "worst"), (5, "best"), (2, "best")]
    assert [k for _, k in chosen[4:]] == ["random", "random"] and {i for i, _ in chosen[4:]} <= {0, 4, 6}
    assert chosen == select_queries(ap, 6, seed=0)  # reproducible
    assert select_queries(ap, 1) == [(1, "worst")]
    # more rows than queries with a match: the one without is drawn last
    assert select_queries(ap, 20)[-1][0] == 3 and len(select_queries(ap, 20)) == len(ap)
    with pytest.raises(ValueError, match="num_queries"):
        select_queries(ap, 0)


def test_ranked_list_rows_and_the_market_exclusion(tmp_path):
    paths = make_images(tmp_path / "img", 10)
    query_paths, gallery_paths = paths[:4], paths[4:]
    gallery_paths[4] = tmp_path / "missing.jpg"  # g4 is excluded for q1 and ranked last by the others
    fig = ranked_list_figure(query_paths, gallery_paths, DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, num_queries=3, topk=3)
    titles = [sf.texts[0].get_text() for sf in fig.subfigs]
    assert titles == ["worst: query 1, id 2, cam 0, AP 0.25", "best: query 0, id 1, cam 0, AP 1.00",
                      "random: query 3, id 9, cam 0, AP 0.50"]
    captions = [[ax.get_title() for ax in sf.axes] for sf in fig.subfigs]
    assert captions[0] == ["query", "#1\n0.110", "#2\n0.210", "#3\n0.310"]  # 0.01 (g4, same id and camera) left out
    assert captions[1] == ["query", "#1\n0.100", "#2\n0.500", "#3\n0.600"]  # 0.00 (g0) left out
    borders = [[ax.spines["left"].get_edgecolor() for ax in sf.axes[1:]] for sf in fig.subfigs]
    assert borders[0] == [to_rgba(WRONG)] * 3
    assert borders[1] == [to_rgba(CORRECT), to_rgba(WRONG), to_rgba(WRONG)]
    assert borders[2] == [to_rgba(WRONG), to_rgba(CORRECT), to_rgba(WRONG)]
    out = save_figure(fig, tmp_path / "out" / "ranked.png")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size[0] > 100
    assert [p.name for p in out.parent.iterdir()] == ["ranked.png"]

    with pytest.raises(FileNotFoundError, match="missing.jpg"):  # g4 is drawn when it is not excluded
        ranked_list_figure(query_paths, gallery_paths, DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, num_queries=3, topk=6)
    with pytest.raises(ValueError, match="4 query_paths"):
        ranked_list_figure(query_paths, gallery_paths, DIST[:3], Q_PIDS[:3], G_PIDS, Q_CAMS[:3], G_CAMS)
    with pytest.raises(ValueError, match="g_pids: expected 6 entries"):
        ranked_list_figure(query_paths, gallery_paths, DIST, Q_PIDS, G_PIDS[:5], Q_CAMS, G_CAMS)


@pytest.mark.parametrize("size", [(64, 32), (256, 128)])
def test_default_ranked_list_png_stays_small(tmp_path, size):
    paths = make_images(tmp_path / "img", 60, size=size)
    rng = np.random.default_rng(1)
    q, g = 12, 48
    fig = ranked_list_figure(paths[:q], paths[q:], rng.random((q, g)), rng.integers(0, 6, q), rng.integers(0, 6, g),
                             rng.integers(0, 3, q), rng.integers(0, 3, g))
    assert len(fig.subfigs) == 6 and all(len(sf.axes) == 11 for sf in fig.subfigs)
    out = save_figure(fig, tmp_path / "ranked.png")
    assert 10_000 < out.stat().st_size < 200_000


def test_cluster_selection_and_purity():
    labels = np.array([0] * 6 + [1] * 5 + [2] * 4 + [3] * 3 + [4] * 2 + [-1] * 3)
    true = np.array([0] * 6 + [1, 1, 1, 2, 2] + [4, 3, 4, 3] + [5] * 3 + [6] * 2 + [7, 8, 9])
    purity = cluster_purity(labels, true)
    assert purity[0] == (1.0, 0) and purity[1] == (0.6, 1) and purity[2] == (0.5, 3)
    assert select_clusters(labels, true, 5) == [(0, "largest"), (1, "largest"), (2, "most impure"),
                                                (3, "most impure"), (4, "random")]
    three = select_clusters(labels, true, 3, seed=0)
    assert three[:2] == [(0, "largest"), (2, "most impure")] and three[2][1] == "random"
    assert three[2][0] in (1, 3, 4) and three == select_clusters(labels, true, 3, seed=0)
    unknown = select_clusters(labels, None, 3)
    assert unknown[:2] == [(0, "largest"), (1, "largest")] and unknown[2][1] == "random"
    assert len(select_clusters(labels, true, 50)) == 5


def test_cluster_gallery_figure(tmp_path):
    labels = np.array([0] * 6 + [1] * 5 + [2] * 4 + [3] * 3 + [4] * 2 + [-1] * 3)
    true = np.array([0] * 6 + [1, 1, 1, 2, 2] + [4, 3, 4, 3] + [5] * 3 + [6] * 2 + [7, 8, 9])
    paths = make_images(tmp_path / "img", len(labels))
    fig = cluster_gallery_figure(paths, labels, true, num_clusters=3, per_cluster=4)
    titles = [sf.texts[0].get_text() for sf in fig.subfigs]
    assert titles[0] == "cluster 0: 6 images, purity 1.00 (majority id 0); largest"
    assert titles[1] == "cluster 2: 4 images, purity 0.50 (majority id 3); most impure"
    assert titles[2].endswith("; random") and titles[3] == "outliers: 3 images (13%)"
    impure = fig.subfigs[1].axes
    assert [ax.get_title() for ax in impure] == ["id 4", "id 3", "id 4", "id 3"]
    assert [ax.spines["top"].get_edgecolor() for ax in impure] == [to_rgba(c) for c in (WRONG, CORRECT) * 2]
    assert sum(ax.get_title() != "" for ax in fig.subfigs[0].axes) == 4  # 4 of the 6 members
    assert save_figure(fig, tmp_path / "clusters.png").stat().st_size > 5_000

    anonymous = cluster_gallery_figure(paths, labels, None, num_clusters=2, per_cluster=3)
    titles = [sf.texts[0].get_text() for sf in anonymous.subfigs]
    assert titles[0] == "cluster 0: 6 images; largest" and titles[2] == "outliers: 3 images (13%)"
    assert titles[1].endswith(" images; random") and "purity" not in titles[1]
    shown = [int(ax.get_title()[1:]) for ax in anonymous.subfigs[0].axes]  # captioned with the image index
    assert len(shown) == 3 and shown == sorted(shown) and set(shown) <= set(range(6))
    with pytest.raises(ValueError, match="labels has 23 entries for 5 paths"):
        cluster_gallery_figure(paths[:5], labels)
    with pytest.raises(ValueError, match="integer cluster ids"):
        cluster_gallery_figure(paths, labels.astype(float))


def test_image_rows_figure_keeps_order_and_captions(tmp_path):
    paths = make_images(tmp_path / "img", 5)
    fig = image_rows_figure([("id 7: 3 images", paths[:3], ["cam 01", "cam 02", "cam 01"]),
                             ("id 9: 2 images", paths[3:], ["cam 04", "cam 05"])], image_size=(64, 32))
    assert [sf.texts[0].get_text() for sf in fig.subfigs] == ["id 7: 3 images", "id 9: 2 images"]
    assert [ax.get_title() for ax in fig.subfigs[0].axes] == ["cam 01", "cam 02", "cam 01"]
    assert [ax.get_title() for ax in fig.subfigs[1].axes] == ["cam 04", "cam 05", ""]  # the short row's spare cell
    assert save_figure(fig, tmp_path / "rows.png").stat().st_size > 2_000
    with pytest.raises(ValueError, match="row 'id 7' has 2 paths and 1 captions"):
        image_rows_figure([("id 7", paths[:2], ["cam 01"])])
    with pytest.raises(ValueError, match="row 'id 7' has 2 paths and 2 captions and 1 borders"):
        image_rows_figure([("id 7", paths[:2], ["cam 01", "cam 02"], ["red"])])
    framed = image_rows_figure([("id 7", paths[:2], ["a", "b"], [None, "red"])], cols=4)
    assert len(framed.subfigs[0].axes) == 4
    assert framed.subfigs[0].axes[1].spines["top"].get_edgecolor() == to_rgba("red")
    with pytest.raises(ValueError, match="no image to show"):
        image_rows_figure([])
