"""Training curves from metrics.jsonl: series loading, the PNG for one and several runs, clear errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from mqreid.tools.plot import load_series, main, plot_runs, read_metrics


def write_run(folder, epochs=4, labels=True):
    """A run directory with a metrics.jsonl as the trainer writes it (evaluation every 2 epochs)."""
    rows = [{"epoch": 0, "mAP": 1.5, "rank1": 4.0, "rank5": 9.0, "rank10": 12.0, "time_eval": 0.5}]
    for e in range(1, epochs + 1):
        row = {"epoch": e, "lr": 3.5e-4, "clusters": 10 * e, "outlier_ratio": 0.4 / e, "loss": 5.0 - e,
               "temperature": 0.05, "time_extract": 1.0, "time_cluster": 0.1, "time_train": 2.0}
        if labels:
            row.update(ari=0.1 * e, nmi=0.2 * e, purity=0.5 + 0.1 * e)
        if e % 2 == 0:
            row.update(mAP=10.0 * e, rank1=20.0 * e, rank5=30.0, rank10=40.0, time_eval=0.5)
        rows.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (folder / "metrics.jsonl").write_text(text)
    return folder


def test_load_series_keeps_finite_values_per_epoch(tmp_path):
    run = write_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:  # a NaN loss, a null ARI, then epoch 5 logged twice
        f.write(json.dumps({"epoch": 5, "clusters": 1, "loss": math.nan, "ari": None, "temperature": 0.05}) + "\n")
        f.write(json.dumps({"epoch": 5, "clusters": 55, "loss": math.nan, "ari": None, "temperature": 0.06}) + "\n")
    series = load_series(run)
    epochs, values = series["mAP"]
    assert epochs.tolist() == [0, 2, 4] and values.tolist() == [1.5, 20.0, 40.0]
    assert series["rank1"][1].tolist() == [4.0, 40.0, 80.0]
    assert series["clusters"][0].tolist() == [1, 2, 3, 4, 5] and series["clusters"][1].tolist() == [10, 20, 30, 40, 55]
    assert series["loss"][0].tolist() == [1, 2, 3, 4]  # NaN dropped
    assert series["ari"][0].tolist() == [1, 2, 3, 4]  # null dropped
    np.testing.assert_allclose(series["outlier_ratio"][1], [0.4, 0.2, 0.4 / 3, 0.1])
    assert series["temperature"][1][-1] == 0.06
    assert series["mAP"][0].dtype == np.int64 and series["mAP"][1].dtype == np.float64
    assert load_series(run / "metrics.jsonl").keys() == series.keys()  # the file itself works too


def test_one_run_writes_curves_png_in_the_run(tmp_path, capsys):
    run = write_run(tmp_path / "run", labels=False)  # no ARI/NMI: that panel says so
    assert main([str(run)]) == 0
    out = run / "curves.png"
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.stat().st_size > 10_000
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (1100, 750)


def test_several_runs_are_overlaid(tmp_path):
    a, b = write_run(tmp_path / "sweep" / "0", epochs=6), write_run(tmp_path / "sweep" / "1", epochs=3, labels=False)
    out = plot_runs([a, b])
    assert out == tmp_path / "sweep" / "curves_compare.png" and out.stat().st_size > 10_000
    assert main([str(a), str(b), "--out", str(tmp_path / "cmp" / "x.png")]) == 0
    assert (tmp_path / "cmp" / "x.png").stat().st_size > 10_000
    assert not [p for p in (tmp_path / "cmp").iterdir() if p.name != "x.png"]  # no temporary file left


def test_errors_name_the_metrics_file(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        load_series(tmp_path / "nowhere")
    (tmp_path / "no_metrics").mkdir()
    with pytest.raises(FileNotFoundError, match="no_metrics has no metrics.jsonl"):
        load_series(tmp_path / "no_metrics")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"empty/metrics.jsonl is empty"):
        load_series(empty)
    bad = write_run(tmp_path / "bad")
    lines = (bad / "metrics.jsonl").read_text().splitlines()
    (bad / "metrics.jsonl").write_text("\n".join([lines[0], '{"epoch": 1, "loss', *lines[2:]]) + "\n")
    with pytest.raises(ValueError, match=r"bad/metrics.jsonl:2 is not valid JSON"):
        load_series(bad)
    (bad / "metrics.jsonl").write_text(lines[0] + "\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: expected a JSON object with an integer 'epoch'"):
        load_series(bad)
    # a last line still being written (no newline yet) is ignored
    (bad / "metrics.jsonl").write_text("\n".join(lines[:3]) + '\n{"epoch": 3, "lo')
    assert [r["epoch"] for r in read_metrics(bad)] == [0, 1, 2]
    assert main([str(tmp_path / "no_metrics")]) == 2
    assert "no_metrics has no metrics.jsonl" in capsys.readouterr().err
