"""The DBSCAN eps sweep of a checkpoint, end to end on the tiny synthetic set."""

from __future__ import annotations

import pytest

from mqreid.tools.eps import main, parse_eps, run_eps_sweep

from tiny_checkpoint import write_tiny_checkpoint


def test_parse_eps():
    assert parse_eps("0.3:0.5:0.1") == [0.3, 0.4, 0.5]
    assert parse_eps(["0.3:0.5:0.1", "0.45,0.55", "0.5"]) == [0.3, 0.4, 0.45, 0.5, 0.55]
    assert len(parse_eps("0.3:0.8:0.02")) == 26
    for bad, message in [("0.2:0.5", "start:stop:step"), ("abc", "expected a number"), ("0.1:0.2:0", "step > 0"),
                         ("0.5:0.3:0.1", "stop >= start"), ("0.5,1.2", r"\[1.2\] outside \(0, 1\)"),
                         ("", "no value")]:
        with pytest.raises(ValueError, match=message):
            parse_eps(bad)


def test_eps_sweep_end_to_end(data_root, tmp_path, capsys):
    # the stored data root is gone (the run was trained elsewhere): --data-root points at the data
    moved = tmp_path / "moved"
    ckpt = write_tiny_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", moved)
    gallery = tmp_path / "clusters.png"
    code = main([str(ckpt), "--eps", "0.3:0.45:0.05", "--data-root", str(data_root), "--device", "cpu",
                 "--num-workers", "0", "--batch-size", "64", "--gallery", str(gallery)])
    assert code == 0 and not moved.exists()
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line[:1] in "* " and line.lstrip("* ")[:1].isdigit()]
    assert [float(line.split()[-5]) for line in table] == [0.3, 0.35, 0.4, 0.45, 0.6]  # + the configured 0.6
    assert table[-1].startswith("*") and "8 true ids" in printed
    out = ckpt.parent / "eps_sweep.png"
    assert f"wrote {out}" in printed and out.stat().st_size > 10_000
    assert f"wrote {gallery}" in printed and gallery.stat().st_size > 10_000

    sweep = run_eps_sweep(ckpt, [0.6, 0.7], data_root=data_root, device="cpu")
    assert [r["eps"] for r in sweep.rows] == [0.6, 0.7] and sweep.configured_eps == 0.6
    assert sweep.num_true_ids == 8 and sweep.num_images > 0
    for row in sweep.rows:
        assert {"num_clusters", "outlier_ratio", "ari", "nmi"} <= row.keys() and "labels" not in row
        assert 0 <= row["outlier_ratio"] <= 1
    assert sweep.rows[1]["outlier_ratio"] <= sweep.rows[0]["outlier_ratio"]  # a larger radius keeps more points


def test_eps_sweep_needs_a_dbscan_run(tmp_path, capsys):
    ckpt = write_tiny_checkpoint(tmp_path / "best.pt", tmp_path / "data", "clusterer=infomap")
    with pytest.raises(ValueError, match=r"stored clusterer \(mqreid.cluster.InfomapClusterer\) is not DBSCAN-like"):
        run_eps_sweep(ckpt, device="cpu")
    assert main([str(ckpt), "--device", "cpu"]) == 2
    assert "clusterer=dbscan" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
