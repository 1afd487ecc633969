"""bench/v2_calibration.py: candidates, records and the bands of docs/benchmark-v2.md, from fabricated records
(nothing is rendered or trained here)."""

from __future__ import annotations

import importlib.util
import json
import os

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
    assert cal.candidate_sets("c0", False, [], []) == sets  # named alone: its recorded overrides
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


def test_train_collect_copies_finished_runs_with_their_settings(tmp_path, monkeypatch):
    """--collect starts nothing and copies a finished run's records (no checkpoint) with its settings: those
    noted when queued, its start and end, and those when copied."""
    records, runs = tmp_path / "records", tmp_path / "runs"
    done = runs / "c0" / "D" / "seed0"
    (done / ".hydra").mkdir(parents=True)
    cal.queue_run(done, ["train.py", "dataset=synthetic_v2"])
    for name in cal.RECORD_FILES:
        (done / name).write_text("{}\n")
    os.utime(done / ".hydra" / "config.yaml", (1000.0, 1000.0))  # the run started
    os.utime(done / "results.json", (1600.0, 1600.0))  # and ended 10 minutes later
    (done / "last.pt").write_bytes(b"weights")
    (runs / "c0" / "H" / "seed1").mkdir(parents=True)  # started, not finished
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # train imports the grid's runner from bench/
    assert cal.main(["train", "--candidate", "c0", "--collect", "--seeds", "0", "1", "--records", str(records),
                     "--runs", str(runs)]) == 0
    record = records / "c0" / "D" / "train_seed0"
    assert sorted(p.name for p in record.rglob("*") if p.is_file()) == sorted(
        ["results.json", "metrics.jsonl", "config.yaml", "overrides.yaml", "settings.json"])
    saved = json.loads((record / "settings.json").read_text())
    assert saved["queued"]["command"] == "train.py dataset=synthetic_v2" and (saved["start"], saved["end"]) == (1000.0, 1600.0)
    assert not (records / "c0" / "H" / "train_seed1").exists() and not (runs / "c0" / "D" / "seed1").exists()
