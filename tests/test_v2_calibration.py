"""bench/v2_calibration.py: candidates, records and the bands of docs/benchmark-v2.md, from fabricated records
(nothing is rendered or trained here)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("v2_calibration", REPO / "bench" / "v2_calibration.py")
cal = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cal)


def record(folder, seed, s2, gap, closure, kappa):
    cal.write_json(folder / f"stats_seed{seed}.json", {"S2_excess": s2, "S2_excess_centred": 0.0,
                                                       "S3_raw": {"same": 0.9, "cross": 0.9 - gap, "gap": gap},
                                                       "S4_closure": closure, "S5_knn": {"kappa": kappa},
                                                       "S5_probe": {"kappa": 0.0}})


def run(folder, seed, initial, final):
    cal.write_json(folder / f"train_seed{seed}" / "results.json", {"initial": {"mAP": initial},
                                                                   "final": {"mAP": final}})


def test_bands_from_records(tmp_path, capsys):
    for seed in (0, 1, 2):
        record(tmp_path / "v1" / "D", seed, 0.35, 0.20, 0.6, 0.0)
        record(tmp_path / "c0" / "D", seed, 0.05 + 0.01 * seed, 0.05, 0.5, 0.0)
        record(tmp_path / "c0" / "H", seed, 0.20, 0.30, 0.2, 0.2)
        run(tmp_path / "c0" / "D", seed, 30.0, 62.0)
        run(tmp_path / "c0" / "H", seed, 10.0, 25.0)
    d, h, ref = (cal.summary(tmp_path / c / s) for c, s in (("c0", "D"), ("c0", "H"), ("v1", "D")))
    assert d["S2"] == pytest.approx(0.06) and d["final"] == 62.0 and h["S4"] == pytest.approx(0.2)
    verdicts = dict(cal.bands(d, h, {"D": ref}))
    assert all(verdicts.values()), verdicts  # ratio 25/62 = 0.40, every margin met
    record(tmp_path / "c0" / "H", 2, 0.20, 0.30, None, 0.2)  # one seed under the minimum gap: S4 undefined
    h = cal.summary(tmp_path / "c0" / "H")
    verdicts = dict(cal.bands(d, h, {"D": ref}))
    assert h["S4"] is None and verdicts["S4 c_H <= 0.50 (and < c_D when defined)"] is False
    assert dict(cal.bands(d, h, None))["S2 0.01 <= e_D < e_D(v1)"] is None  # no reference: not measured


def test_a_candidate_keeps_its_definition(tmp_path, monkeypatch):
    monkeypatch.setattr(cal, "RECORDS", tmp_path)
    sets = cal.candidate_sets("c0", False, ["dataset.noise=0.4"], [])
    assert sets == {"D": ["dataset=synthetic_v2", "dataset.noise=0.4"], "H": ["dataset=synthetic_v2_hard"]}
    assert json.loads((tmp_path / "c0" / "candidate.json").read_text())["overrides"]["D"] == ["dataset.noise=0.4"]
    assert cal.candidate_sets("c0", False, ["dataset.noise=0.4"], []) == sets
    with pytest.raises(SystemExit, match="candidate 'c0' is defined in"):
        cal.candidate_sets("c0", False, ["dataset.noise=0.5"], [])
    assert cal.candidate_sets("v1", True, [], [])["H"] == ["dataset=synthetic_hard"]


def test_partial_records_give_no_band_verdict(tmp_path, monkeypatch, capsys):
    """Fewer dataset seeds than pre-registered: the table shows them as partial, and no band is judged."""
    for seed in (0, 1, 2):
        record(tmp_path / "v1" / "D", seed, 0.35, 0.20, 0.6, 0.0)
        record(tmp_path / "v1" / "H", seed, 0.35, 0.20, 0.6, 0.0)
    for seed in (0, 1):
        record(tmp_path / "c0" / "D", seed, 0.05, 0.05, 0.5, 0.0)
    for seed in (0, 1, 2):
        record(tmp_path / "c0" / "H", seed, 0.20, 0.30, 0.2, 0.2)
    run(tmp_path / "c0" / "D", 0, 30.0, 62.0)
    for name in ("v1", "c0"):
        (tmp_path / name / "candidate.json").write_text("{}")
    d, h = cal.summary(tmp_path / "c0" / "D"), cal.summary(tmp_path / "c0" / "H")
    assert not d["stats_complete"] and h["stats_complete"] and not d["runs_complete"]
    assert d["S2"] == pytest.approx(0.05)  # the table still shows what was measured
    assert all(holds is None for _, holds in cal.bands(d, h, {"D": cal.summary(tmp_path / "v1" / "D")}))
    assert cal.main(["report", "--records", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| c0 | D | 2 (partial) |" in out and "| 1 (partial) |" in out
    assert "c0: PARTIAL records (D: statistics 2 of 3 seeds, runs 1 of 3; H: runs 0 of 3)" in out
    assert "0 of 8 bands hold" in out and " yes: " not in out and " no: " not in out
