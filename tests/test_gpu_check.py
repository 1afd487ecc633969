"""bench/gpu_check.py: the plan fits its budget; --smoke runs every section on the CPU at toy sizes and passes; a
check that is stopped (or a section that runs out of its cap) leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"
sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402

linux_only = pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="reads /proc (Linux)")


def check_env(token: str | None = None) -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="disabled")
    env.pop("OUT", None)
    if token:
        env[gpu_check.MARKER] = token
    return env


def test_plan_fits_the_budget_most_important_first():
    out = subprocess.run([sys.executable, str(SCRIPT), "--plan"], capture_output=True, text=True, check=True).stdout
    plan = json.loads(out)
    assert set(plan) == {"budget", "sections"}
    assert plan["budget"] <= 480
    assert sum(plan["sections"].values()) <= plan["budget"]
    assert list(plan["sections"]) == list(gpu_check.SECTIONS)
    order = list(plan["sections"])
    # the environment first (everything else is read against it); the multi-process BatchNorm, training in
    # each precision and the host waits before the timings; the CPU comparisons last
    assert order[0] == "environment"
    assert order.index("bn_span") < order.index("e2e") < order.index("sync") < order.index("shapes")
    assert order[-3:] == ["cluster", "eval", "onnx"]
    smoke = gpu_check.plan(smoke=True)
    assert sum(smoke["sections"].values()) <= smoke["budget"]
    assert gpu_check.plan(False, ["eval", "e2e"], {"e2e": 7}) == {"budget": 480, "sections": {"e2e": 7, "eval": 25}}


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert gpu_check.main(["--sections", "environment,nope", "--out", str(tmp_path)]) == 2
    assert "unknown section(s) nope" in capsys.readouterr().err
    assert gpu_check.main(["--cap", "e2e=soon", "--plan"]) == 2
    assert "--cap e2e=soon: expected NAME=SECONDS" in capsys.readouterr().err


def test_compare_rows_ignores_times_and_tolerates_tiny_loss_differences():
    a = [{"epoch": 0, "mAP": 10.0, "time_eval": 1.0}, {"epoch": 1, "loss": 2.0, "mAP": 12.0, "time_train": 3.0}]
    b = [{"epoch": 0, "mAP": 10.0, "time_eval": 9.0}, {"epoch": 1, "loss": 2.0 + 5e-7, "mAP": 12.0, "time_train": 1.0}]
    same, how = gpu_check.compare_rows(a, b)
    assert same, how
    b[1]["loss"] = 2.001
    assert gpu_check.compare_rows(a, b) == (False, "epoch 1: loss 2.0 vs 2.001")
    b[1]["loss"], b[1]["mAP"] = 2.0, 12.5
    assert gpu_check.compare_rows(a, b) == (False, "epoch 1: mAP 12.0 vs 12.5")


def test_a_section_ended_by_its_cap_is_a_skip_even_after_passing_rows_but_a_failure_stays_a_failure():
    passed = {"status": gpu_check.PASS}
    cut = {"status": gpu_check.SKIP}
    assert gpu_check.section_status([passed, cut], finished=False) == gpu_check.SKIP
    assert gpu_check.section_status([{"status": gpu_check.FAIL}, cut], finished=False) == gpu_check.FAIL
    assert gpu_check.section_status([passed, {"status": gpu_check.INFO}]) == gpu_check.PASS
    assert gpu_check.section_status([{"status": gpu_check.INFO}]) == gpu_check.INFO
    assert gpu_check.section_status([cut]) == gpu_check.SKIP


def test_sync_counter_names_each_place_and_fails_per_step_or_unexplained_ones(tmp_path):
    counter = gpu_check.SyncCounter()

    def train_epoch():  # named like the trainer's function whose end-of-epoch read has a stated reason
        counter.record(traceback.extract_stack())

    def step():
        counter.record(traceback.extract_stack())

    train_epoch()
    for _ in range(10):
        step()
    assert sorted(counter.counts.values()) == [1, 10]
    assert {key[1] for key in counter.counts} == {"train_epoch", "step"}
    report = gpu_check.Report("sync", tmp_path / "rows.jsonl", smoke=False)
    counter.report(report, "fp32 steps", 10, "step")
    rows = {row["measure"].split(" in ")[-1]: row for row in gpu_check.read_jsonl(tmp_path / "rows.jsonl")}
    assert rows["fp32 steps: synchronisations"]["status"] == "FAIL"  # one place syncs at every step
    assert rows["step"]["status"] == "FAIL" and "per step" in rows["step"]["criterion"]
    assert rows["train_epoch"]["status"] == "PASS" and gpu_check.SYNC_REASONS["train_epoch"] in rows["train_epoch"][
        "value"]


def test_sync_counter_counts_the_debug_mode_warnings_only_while_on():
    import warnings

    with gpu_check.SyncCounter() as counter:
        warnings.warn(f"x {gpu_check.SYNC_MESSAGE} y", UserWarning)  # off: not counted
        counter.start()
        warnings.warn(f"x {gpu_check.SYNC_MESSAGE} y", UserWarning)
        warnings.warn(f"x {gpu_check.SYNC_MESSAGE} y", UserWarning)  # "always": repeats are counted
        counter.stop()
    assert sum(counter.counts.values()) == 2


@linux_only
def test_sweep_ends_the_processes_that_carry_the_marker_in_any_session():
    token = f"test-{uuid.uuid4().hex}"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=check_env(token),
                             start_new_session=True)
    try:
        deadline = time.time() + 10
        while child.pid not in gpu_check.marked_processes(token) and time.time() < deadline:
            time.sleep(0.05)
        assert gpu_check.marked_processes(token) == [child.pid]
        assert gpu_check.sweep(token) == [child.pid]
        assert child.wait(timeout=10) == -signal.SIGTERM
        assert gpu_check.marked_processes(token) == []
    finally:
        child.kill()


@pytest.mark.slow
def test_smoke_runs_every_section(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], cwd=tmp_path, env=check_env(),
                          capture_output=True, text=True, timeout=900)
    report = json.loads((out / "gpu_check.json").read_text())
    failed = [row for row in report["rows"] if row["status"] == "FAIL"]
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-4000:], (out / "gpu_check.log").read_text()[-6000:])
    assert report["mode"] == "smoke" and report["stopped"] is None
    assert list(report["sections"]) == list(gpu_check.SECTIONS)
    for name in gpu_check.SECTIONS:
        rows = [row for row in report["rows"] if row["section"] == name]
        assert any(row["status"] in ("PASS", "INFO") for row in rows), name  # it ran
        assert report["sections"][name]["exit"] == 0, name
    assert {row["status"] for row in report["rows"]} <= {"PASS", "SKIP", "INFO"}
    table = (out / "gpu_check.md").read_text()
    assert table.startswith("# mqreid GPU check: smoke") and "| section | measure | value | criterion | result |" in table
    assert (out / "gpu_check.log").stat().st_size > 0
    assert "| section | measure | value | criterion | result |" in proc.stdout


def wait_for(predicate, seconds: float):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return predicate()


def torchrun_ranks(token: str) -> list[int]:
    """The check's processes that torchrun started (in sessions of their own): they carry LOCAL_RANK."""
    pids = []
    for pid in gpu_check.marked_processes(token):
        with open(f"/proc/{pid}/environ", "rb") as f:
            if any(item.startswith(b"LOCAL_RANK=") for item in f.read().split(b"\0")):
                pids.append(pid)
    return pids


@linux_only
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_check_leaves_no_process(tmp_path, sig):
    """Stopped while torchrun's workers run (SIGTERM: the check ends them; SIGKILL: the section process, told by
    the kernel that the check died, ends them), nothing of the check survives."""
    token = f"test-{uuid.uuid4().hex}"
    out = tmp_path / "out"
    check = subprocess.Popen([sys.executable, str(SCRIPT), "--smoke", "--sections", "torchrun", "--out", str(out)],
                             cwd=tmp_path, env=check_env(token), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ranks = wait_for(lambda: len(torchrun_ranks(token)) == 2 and torchrun_ranks(token), 120)
        assert ranks, "torchrun's two workers did not start"
        check.send_signal(sig)
        assert check.wait(timeout=60) == (128 + sig if sig != signal.SIGKILL else -sig)
        survivors = wait_for(lambda: not gpu_check.marked_processes(token), 30) or gpu_check.marked_processes(token)
        assert survivors is True, f"still running: {survivors}"
        if sig == signal.SIGTERM:  # the check wrote what it had, the stopped section as a SKIP
            report = json.loads((out / "gpu_check.json").read_text())
            assert report["stopped"] == "SIGTERM"
            assert [row["status"] for row in report["rows"] if row["section"] == "torchrun"][-1] == "SKIP"
    finally:
        check.kill()
        gpu_check.sweep(token)


@linux_only
@pytest.mark.slow
def test_a_section_over_its_cap_is_a_skip_and_leaves_no_process(tmp_path):
    token = f"test-{uuid.uuid4().hex}"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--sections", "bn_span", "--cap", "bn_span=4",
                           "--out", str(out)], cwd=tmp_path, env=check_env(token), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    last = [row for row in report["rows"] if row["section"] == "bn_span"][-1]
    assert last["status"] == "SKIP" and "ran out of its 4 s cap" in last["value"], last
    assert report["sections"]["bn_span"]["status"] == "SKIP"
    assert wait_for(lambda: not gpu_check.marked_processes(token), 10), gpu_check.marked_processes(token)
