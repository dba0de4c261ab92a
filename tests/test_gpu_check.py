"""`make gpu-check DEVICE=cpu`: the GPU check's script end to end on the CPU with tiny sizes (a few minutes)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402
import train_step  # noqa: E402


@pytest.mark.slow
def test_gpu_check_rehearsal_writes_a_complete_report(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-u", "bench/gpu_check.py", "--device", "cpu", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert {name: part["status"] for name, part in report["parts"].items()} == dict.fromkeys(
        ["packages", "pytest", "lfq", "base", "large"], "ok")
    outcomes = {test["name"]: test["outcome"] for test in report["tests"]}
    assert outcomes["test_lfq_on_the_device_equals_the_cpu"] == "passed"
    assert outcomes["test_torchrun_training_on_the_device_resumes"] == "passed"
    assert "failed" not in outcomes.values() and "error" not in outcomes.values()
    for part in ("base", "large"):
        figures = report["figures"][part]
        assert figures["complete"] and figures["max_batch"]["ours"]["batch"] >= 2
        assert all(row["img_per_s"] > 0 for row in figures["rows"])
    assert report["figures"]["lfq"]["rows"][0]["max_abs_diff"] < 1e-4
    markdown = (tmp_path / "report.md").read_text()
    assert "## pytest -m gpu" in markdown and "## Training step, tiny (in256_large)" in markdown


@pytest.mark.slow
def test_a_part_that_runs_out_of_time_is_reported_and_the_rest_still_runs(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(gpu_check.CAPS, "cpu", {**gpu_check.CAPS["cpu"], "base": 3})
    code = gpu_check.main(["--device", "cpu", "--out", str(tmp_path), "--parts", "base", "lfq"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 1 and report["parts"]["base"]["status"] == "timed out"
    assert report["parts"]["lfq"]["status"] == "ok" and report["figures"]["lfq"]["rows"]
    assert "## base: timed out" in (tmp_path / "report.md").read_text()


def test_largest_batch_doubles_then_bisects_on_out_of_memory(monkeypatch) -> None:
    monkeypatch.setattr(train_step, "fits", lambda step, entropy_fn, images, batch, device: batch <= 100)
    found = train_step.largest_batch(None, None, None, 8, 1024, torch.device("cuda"))
    assert 88 <= found["batch"] <= 100 and not found["capped"]
    assert [batch for batch, _ in found["probes"][:5]] == [8, 16, 32, 64, 128]
    capped = train_step.largest_batch(None, None, None, 8, 64, torch.device("cuda"))
    assert capped["batch"] == 64 and capped["capped"]
    assert train_step.largest_batch(None, None, None, 128, 1024, torch.device("cuda"))["batch"] == 0


def test_wheels_check_names_a_missing_requirement(tmp_path) -> None:
    assert gpu_check.check_wheels(tmp_path) == 1  # an empty folder lacks every required distribution
