"""The rendered training job on a real one-node SLURM cluster: 1 node x 2 CPU processes (gloo), the tiny demo model.

Covers what no unit test can: srun's task layout feeding train.py's rank set-up, the batch shell's signal path,
`scontrol requeue` from inside the job and the resume of the requeued attempt, and a user's `scancel` staying a
cancel.  Needs root and Debian's SLURM packages (installed with apt-get when missing); see tests/slurm/cluster.py.
Run on their own with `pytest -m slurm`.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from slurm.cluster import SlurmCluster, missing_requirement

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
# The demo, made small enough that a 2-process job spends its time starting up rather than training.
TINY = ["cluster=slurm_local", "experiment=demo", "logger.mode=disabled", "train.batch_size=2", "train.log_every=1",
        "train.eval_every=0", "train.image_every=0", "train.eval_images=4", "data.num_workers=0"]


@pytest.fixture(scope="module")
def cluster():
    reason = missing_requirement()
    if reason and os.environ.get("OPENMAGVIT2_REQUIRE_SLURM") == "1":
        pytest.fail(f"OPENMAGVIT2_REQUIRE_SLURM=1 (set by .ci/run) but no test SLURM cluster can start: {reason}")
    if reason:
        pytest.skip(f"cannot start a test SLURM cluster: {reason}")
    # Not under pytest's tmp dir: munged runs as user munge and must be able to reach its socket directory.
    root = Path(tempfile.mkdtemp(prefix="openmagvit2-slurm-"))
    with SlurmCluster(root) as started:
        yield started
    shutil.rmtree(root, ignore_errors=True)


def submit(cluster: SlurmCluster, workdir: Path, run_dir: Path, *overrides: str) -> str:
    """Submit through the real command line (`python -m openmagvit2.launch submit`); returns the job id."""
    env = {**cluster.env(), "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true"}
    done = subprocess.run([sys.executable, "-m", "openmagvit2.launch", "submit", *TINY, f"hydra.run.dir={run_dir}",
                           *overrides], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    match = re.search(r"^submitted job (\d+): train on 1 node\(s\) x 2 process\(es\)$", done.stdout, flags=re.M)
    assert match, done.stdout
    assert f"run dir: {run_dir}" in done.stdout
    return match.group(1)


def job_log(run_dir: Path, job_id: str) -> str:
    path = run_dir / "slurm" / f"train-{job_id}.out"
    return path.read_text() if path.exists() else ""


def wait_for_line(run_dir: Path, job_id: str, pattern: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if re.search(pattern, job_log(run_dir, job_id), flags=re.M):
            return
        time.sleep(0.5)
    raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s:\n{job_log(run_dir, job_id)[-3000:]}")


def wait_until_done(cluster: SlurmCluster, run_dir: Path, job_id: str, timeout_s: float) -> str:
    try:
        return cluster.wait_for(job_id, TERMINAL, timeout_s)
    except TimeoutError as error:
        raise AssertionError(f"{error}\n{job_log(run_dir, job_id)[-3000:]}") from None


def logged_steps(text: str) -> list[int]:
    """The step numbers of rank 0's periodic `step N/M ...` lines, in order."""
    return [int(n) for n in re.findall(r"^step (\d+)/\d+ ", text, flags=re.M)]


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.pt"))


def test_training_job_runs_two_gloo_processes(cluster: SlurmCluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job_id = submit(cluster, tmp_path, run_dir, "train.max_steps=4", "train.ckpt_every=2")
    state = wait_until_done(cluster, run_dir, job_id, timeout_s=240)
    log = job_log(run_dir, job_id)
    assert state == "COMPLETED", log[-3000:]
    assert cluster.job_field(job_id, "ExitCode") == "0:0"
    assert cluster.job_field(job_id, "Restarts") == "0"
    assert f"job {job_id}: attempt 0 on 1 node(s)" in log and ", 2 processes," in log
    assert "on 2 process(es), device cpu" in log  # train.py joined a 2-rank gloo process group
    assert "global batch 4;" in log  # 2 processes x train.batch_size=2
    assert logged_steps(log) == [1, 2, 3, 4, 4]  # the last line is the final evaluation at step 4
    assert checkpoint_steps(run_dir) == [2, 4]
    assert torch.load(run_dir / "checkpoints" / "step_00000004.pt", weights_only=True)["step"] == 4
    assert (run_dir / "COMPLETED").read_text().strip() == "4"
    assert "training completed" in log


def test_preempted_job_checkpoints_requeues_and_resumes(cluster: SlurmCluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    max_steps = 40
    job_id = submit(cluster, tmp_path, run_dir, f"train.max_steps={max_steps}", "train.ckpt_every=1000")
    wait_for_line(run_dir, job_id, r"^step 3/", timeout_s=180)
    # The pre-emption warning, as `#SBATCH --signal=B:USR1@<lead>` delivers it before the time limit.
    cluster.run(["scancel", "--batch", "--signal=USR1", job_id])
    state = wait_until_done(cluster, run_dir, job_id, timeout_s=300)
    log = job_log(run_dir, job_id)
    assert state == "COMPLETED", log[-3000:]
    assert cluster.job_field(job_id, "Restarts") == "1"

    saved = re.search(r"pre-emption signal \(SIGUSR1\) at step (\d+): saved (\S+);", log)
    assert saved, log[-3000:]
    preempt_step, preempt_ckpt = int(saved.group(1)), saved.group(2)
    assert 3 <= preempt_step < max_steps
    assert preempt_ckpt == str(run_dir / "checkpoints" / f"step_{preempt_step:08d}.pt")
    assert torch.load(preempt_ckpt, weights_only=True)["step"] == preempt_step
    assert f"job {job_id}: pre-emption warning handled, checkpoint saved" in log and "requeueing (attempt 1)" in log
    assert f"job {job_id}: attempt 1 on 1 node(s)" in log

    first, second = log.split(f"job {job_id}: attempt 1 on")
    assert f"resumed from {preempt_ckpt} at step {preempt_step}" in second
    assert max(logged_steps(first)) == preempt_step
    resumed = logged_steps(second)
    assert resumed[0] == preempt_step + 1 and resumed[-1] == max_steps  # no step repeated, none skipped
    assert resumed[:-1] == list(range(preempt_step + 1, max_steps + 1))
    assert checkpoint_steps(run_dir) == [preempt_step, max_steps]
    assert (run_dir / "COMPLETED").read_text().strip() == str(max_steps)


def test_cancelled_job_checkpoints_but_stays_cancelled(cluster: SlurmCluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    job_id = submit(cluster, tmp_path, run_dir, "train.max_steps=1000", "train.ckpt_every=1000")
    wait_for_line(run_dir, job_id, r"^step 2/", timeout_s=180)
    cluster.run(["scancel", job_id])  # SIGTERM to the tasks and the batch shell
    wait_for_line(run_dir, job_id, r"not requeueing", timeout_s=60)
    time.sleep(3)  # a requeue, if the script had asked for one, would show by now
    log = job_log(run_dir, job_id)
    assert cluster.job_state(job_id) == "CANCELLED", log[-3000:]
    assert cluster.job_field(job_id, "Restarts") == "0"
    saved = re.search(r"pre-emption signal \(SIGTERM\) at step (\d+): saved", log)
    assert saved, log[-3000:]  # the work is kept: submitting the script again resumes from it
    assert checkpoint_steps(run_dir) == [int(saved.group(1))]
    assert not (run_dir / "COMPLETED").exists()
    assert os.access(run_dir / "slurm" / "train.sbatch", os.X_OK)


def test_submitit_sweep_runs_each_job_as_a_slurm_job(cluster: SlurmCluster, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    env = {**cluster.env(), "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m",
         "hydra/launcher=submitit_slurm_local", f"hydra.sweep.dir={sweep_dir}", "experiment=demo",
         "quantizer.codebook_bits=4,6", "train.max_steps=1", "train.batch_size=2", "data.image_size=32",
         "train.eval_every=0", "train.image_every=0", "train.eval_images=2", "logger.mode=disabled",
         "data.num_workers=0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    # One SLURM array task per sweep point, each with its own submitit log folder <array job>_<index>.
    tasks = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert [t.split("_")[1] for t in tasks] == ["0", "1"] and len({t.split("_")[0] for t in tasks}) == 1
    for task in tasks:
        assert "Job completed successfully" in (sweep_dir / ".submitit" / task / f"{task}_0_log.out").read_text()
    bits = []
    for run_dir in (sweep_dir / "0", sweep_dir / "1"):
        assert (run_dir / "COMPLETED").read_text().strip() == "1"
        bits.append(torch.load(run_dir / "checkpoints" / "step_00000001.pt", weights_only=True)["config"]
                    ["quantizer"]["codebook_bits"])
    assert sorted(bits) == [4, 6]


def test_rendered_script_submitted_by_hand_gives_each_rank_its_cpus(cluster: SlurmCluster, tmp_path: Path) -> None:
    """`render --output job.sbatch` + the user's own `sbatch job.sbatch`, with 2 CPUs per task: the rank sees 2."""
    run_dir = tmp_path / "run"
    # The interpreter, wrapped to report what the rank sees before it becomes train.py.
    python = tmp_path / "python-reporting-cpus"
    python.write_text(f'#!/bin/sh\necho "rank $SLURM_PROCID sees $(nproc) CPU(s), OMP_NUM_THREADS=$OMP_NUM_THREADS"\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {**cluster.env(), "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true"}
    script = tmp_path / "job.sbatch"
    done = subprocess.run([sys.executable, "-m", "openmagvit2.launch", "render", "--output", str(script), *TINY,
                           "cluster.processes_per_node=1", "cluster.cpus_per_task=2", f"cluster.python={python}",
                           f"hydra.run.dir={run_dir}", "train.max_steps=1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    submitted = subprocess.run(["sbatch", "--parsable", str(script)], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    state = wait_until_done(cluster, run_dir, job_id, timeout_s=240)
    log = job_log(run_dir, job_id)
    assert state == "COMPLETED", log[-3000:]
    assert "rank 0 sees 2 CPU(s), OMP_NUM_THREADS=2" in log, log[-3000:]
    assert (run_dir / "COMPLETED").read_text().strip() == "1"


def test_submitit_sweep_job_preempted_checkpoints_requeues_and_resumes(cluster: SlurmCluster, tmp_path: Path) -> None:
    """The sweep path keeps the sbatch path's contract: warning -> checkpoint at the step boundary -> requeue -> resume.
    """
    sweep_dir, max_steps = tmp_path / "sweep", 60
    env = {**cluster.env(), "PYTHONPATH": str(ROOT), "WANDB_SILENT": "true"}
    sweep = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "-m",
         "hydra/launcher=submitit_slurm_local", f"hydra.sweep.dir={sweep_dir}", "experiment=demo",
         "quantizer.codebook_bits=4", f"train.max_steps={max_steps}", "train.ckpt_every=1000", "train.batch_size=2",
         "data.image_size=32", "train.log_every=1", "train.eval_every=0", "train.image_every=0",
         "train.eval_images=2", "logger.mode=disabled", "data.num_workers=0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, log_file, task = time.monotonic() + 240, None, None
        while time.monotonic() < deadline:
            # One sweep point is a plain job (folder <job id>), not an array task (<array id>_<index>).
            tasks = [p for p in (sweep_dir / ".submitit").glob("*") if re.fullmatch(r"\d+(_0)?", p.name)]
            if tasks:
                task = tasks[0].name
                log_file = tasks[0] / f"{task}_0_log.out"
                if log_file.exists() and re.search(r"^step 3/", log_file.read_text(), flags=re.M):
                    break
            time.sleep(0.5)
        else:
            sweep.kill()
            listing = sorted(str(p.relative_to(sweep_dir)) for p in sweep_dir.rglob("*"))
            raise AssertionError(f"the sweep job never reached step 3: {listing}\n{sweep.communicate()[0][-3000:]}\n"
                                 f"{cluster.run(['squeue'], check=False).stdout}")
        # What `#SBATCH --signal=USR2@<signal_delay_s>` delivers before the time limit: SIGUSR2 to every task.
        cluster.run(["scancel", "--signal=USR2", task])
        output, _ = sweep.communicate(timeout=400)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    log = log_file.read_text()
    errors = log_file.with_name(log_file.name.replace("_log.out", "_log.err")).read_text()
    assert sweep.returncode == 0, output[-3000:] + log[-3000:]
    saved = re.search(r"pre-emption signal \(SIGUSR2\) at step (\d+): saved (\S+);", log)
    assert saved, log[-3000:]
    step, ckpt = int(saved.group(1)), saved.group(2)
    assert "checkpoint saved: requeued (attempt 1)" in errors, errors[-3000:]
    assert f"resumed from {ckpt} at step {step}" in log, log[-3000:]
    assert cluster.job_field(task, "Restarts") == "1"
    run_dir = sweep_dir / "0"
    assert checkpoint_steps(run_dir) == [step, max_steps]
    assert (run_dir / "COMPLETED").read_text().strip() == str(max_steps)
