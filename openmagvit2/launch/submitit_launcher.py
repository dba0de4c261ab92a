"""Sweeps on SLURM through hydra-submitit-launcher, with the pre-emption contract of `launch/train.sbatch`.

The sbatch template is the primary SLURM path (docs/cluster.md). For a sweep, hydra-submitit-launcher submits one
job per point, and this launcher is its `SlurmLauncher` with one change: the job keeps the primary path's contract.
- The pre-emption warning (submitit asks SLURM for SIGUSR2 `signal_delay_s` before the time limit) reaches every
  rank; train.py checkpoints at the next step boundary and exits `REQUEUE_EXIT_CODE` (75).
- Rank 0 then requeues the job with `scontrol requeue` (at most `max_num_timeout` times, counted with
  SLURM_RESTART_COUNT as the sbatch template counts `max_requeues`), and the requeued job runs the same sweep point
  in the same run dir with `train.resume=auto`: it resumes from that checkpoint, losing nothing.
- `scancel` (SIGTERM) also makes train.py checkpoint and exit 75, but the job is then no longer RUNNING, and it
  stays cancelled, as in the sbatch path.
- Each task gets `cpus_per_task` CPUs (srun is told so; it no longer inherits them from sbatch).
The launcher class itself is `hydra_plugins.openmagvit2_submitit.SlurmLauncher` (Hydra takes launchers only from
that namespace package); it is a thin subclass of hydra-submitit-launcher's that calls this module.
Stock submitit instead requeues from its own SIGUSR2 handler at once, mid-step, without a checkpoint; and once
train.py has replaced that handler, its exit 75 was simply a failed job. Presets:
`hydra/launcher=submitit_32gpu` or `submitit_slurm_local` (sweep/hydra/launcher/).
"""
from __future__ import annotations

import os
import subprocess
import sys


def _log(message: str) -> None:
    print(f"[openmagvit2 submitit job {os.environ.get('SLURM_JOB_ID', '?')}] {message}", file=sys.stderr, flush=True)


def _job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                         timeout=60).stdout
    fields = dict(field.split("=", 1) for field in out.split() if "=" in field)
    return fields.get("JobState", "UNKNOWN")


def requeue_after_checkpoint(max_requeues: int) -> bool:
    """After train.py exited 75 (checkpoint saved): requeue this SLURM job, as launch/train.sbatch does.

    Only global rank 0 decides (the other ranks return False). Not requeued when the job was already requeued
    `max_requeues` times, or when it is no longer RUNNING (cancelled with scancel, or requeued by SLURM's own
    pre-emption). Returns whether `scontrol requeue` accepted the job.
    """
    if os.environ.get("SLURM_PROCID", "0") != "0" or "SLURM_JOB_ID" not in os.environ:
        return False
    job_id = os.environ["SLURM_JOB_ID"]
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    if attempt >= max_requeues:
        _log(f"checkpoint saved but the job was already requeued {attempt} times (max_num_timeout); "
             "run the sweep again with the same hydra.sweep.dir to go on")
        return False
    state = _job_state(job_id)
    if state != "RUNNING":
        _log(f"checkpoint saved; the job is {state} (scancel?), so it is not requeued")
        return False
    done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        _log(f"scontrol requeue refused ({done.stderr.strip()}); run the sweep again to resume")
        return False
    _log(f"pre-emption handled, checkpoint saved: requeued (attempt {attempt + 1})")
    return True


# Since Slurm 22.05 srun no longer inherits sbatch's --cpus-per-task (each task would get one CPU); submitit's
# srun line takes no options from the Hydra config, but srun reads this variable.
PASS_CPUS_TO_SRUN = "export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}"
