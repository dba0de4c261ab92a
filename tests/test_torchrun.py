"""Plain torchrun made resumable: `python -m openmagvit2.launch.torchrun`, 2 CPU workers (gloo), the tiny demo model.

A pre-emption signal to the launcher checkpoints and exits 75, and the same command resumes; a SIGKILLed agent
leaves no worker running (each checkpoints and exits on its own); ranks that resolve `hydra.run.dir` differently
all write into rank 0's directory.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST, ROOT, run_entry_point
from openmagvit2.launch.torchrun import exit_code, worker_pids
from openmagvit2.train.checkpoint import latest_checkpoint, load
from openmagvit2.train.signals import REQUEUE_EXIT_CODE, stop_when_parent_dies

LAUNCHER = ["-m", "openmagvit2.launch.torchrun", "--standalone", "--nproc-per-node=2"]


def _start(run_dir: str, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true",
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, *LAUNCHER, "train.py", *FAST, "train.max_steps=100000",
                             "train.ckpt_every=100000", f"hydra.run.dir={run_dir}", *overrides],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _read_until(process: subprocess.Popen, prefix: str, timeout_s: float = 240) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout_s
    for line in process.stdout:
        lines.append(line)
        if line.startswith(prefix) or time.monotonic() > deadline:
            break
    return lines


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie no re-parenting init has reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_sigusr1_to_the_launcher_checkpoints_exits_75_and_the_same_command_resumes(tmp_path: Path) -> None:
    process = _start(str(tmp_path))
    lines = _read_until(process, "step 3/")
    process.send_signal(signal.SIGUSR1)  # SLURM's pre-emption warning, sent to the agent only
    output, _ = process.communicate(timeout=120)
    log = "".join(lines) + output
    assert process.returncode == REQUEUE_EXIT_CODE, log
    saved = latest_checkpoint(tmp_path)
    assert saved is not None and "pre-emption signal (SIGUSR1)" in log, log
    saved_step = load(saved)["step"]
    assert saved_step >= 3 and not (tmp_path / "COMPLETED").exists()

    rerun = run_entry_point([*LAUNCHER, "train.py", *FAST, f"train.max_steps={saved_step + 2}",
                             "train.ckpt_every=100000", f"hydra.run.dir={tmp_path}"], env={"PYTHONPATH": str(ROOT)})
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resumed from {saved} at step {saved_step}" in rerun.stdout
    assert f"step {saved_step + 1}/{saved_step + 2}" in rerun.stdout
    assert (tmp_path / "COMPLETED").read_text().strip() == str(saved_step + 2)


@pytest.mark.slow
def test_a_killed_agent_leaves_no_worker_running_and_they_checkpoint(tmp_path: Path) -> None:
    process = _start(str(tmp_path))
    lines = _read_until(process, "step 3/")
    workers = worker_pids(process.pid)
    assert len(workers) == 2, "".join(lines)
    process.kill()  # SIGKILL: the agent cannot forward anything; the kernel tells the workers (PR_SET_PDEATHSIG)
    deadline = time.monotonic() + 120
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    output = process.stdout.read()  # EOF: the workers, which shared the agent's stdout, are gone
    log = "".join(lines) + output
    assert not any(_alive(pid) for pid in workers), log
    assert "pre-emption signal (SIGTERM)" in log, log
    saved = latest_checkpoint(tmp_path)
    assert saved is not None and load(saved)["step"] >= 3, log


@pytest.mark.slow
def test_ranks_with_different_run_dirs_write_into_rank_0s(tmp_path: Path) -> None:
    # Each rank resolves this to its own directory, as `${now:...}` does when the ranks start a second apart.
    result = run_entry_point([*LAUNCHER, "train.py", *FAST, "train.max_steps=2", "train.ckpt_every=1",
                              f"hydra.run.dir={tmp_path}/rank${{oc.env:RANK}}"], env={"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout + result.stderr
    rank0, rank1 = tmp_path / "rank0", tmp_path / "rank1"
    assert (rank0 / "COMPLETED").read_text().strip() == "2"
    assert load(latest_checkpoint(rank0))["step"] == 2 and (rank0 / "train.log").is_file()
    # Only Hydra's own start-up files can be in rank 1's directory; the trainer never wrote there.
    assert not {"checkpoints", "COMPLETED", "train.log", "metrics.json"} & {p.name for p in rank1.iterdir()}


class _Failure:
    def __init__(self, exitcode: int, timestamp: int = 0) -> None:
        self.exitcode, self.timestamp = exitcode, timestamp


def test_exit_code_carries_75_through_the_agent() -> None:
    assert exit_code({0: _Failure(75)}) == 75
    assert exit_code({0: _Failure(75), 1: _Failure(-signal.SIGTERM, 1)}) == 75  # rank 1 stopped by the agent
    assert exit_code({0: _Failure(1), 1: _Failure(75, 1)}) == 1  # a crash is a crash
    assert exit_code({1: _Failure(-signal.SIGKILL)}) == 128 + signal.SIGKILL
    assert exit_code({1: _Failure(-signal.SIGTERM)}) == 128 + signal.SIGTERM  # no checkpoint: not 75


def test_stop_when_parent_dies_only_under_torchrun(monkeypatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert stop_when_parent_dies() is False


def test_one_process_keeps_its_run_dir(tmp_path: Path) -> None:
    import torch

    from openmagvit2.train.distributed import DistributedContext, agree_on_run_dir

    ctx = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert agree_on_run_dir(tmp_path, ctx) == tmp_path
