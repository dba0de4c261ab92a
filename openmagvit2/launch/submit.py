"""Hand a rendered job to SLURM (``sbatch``) or, for ``cluster.launcher=local``, run it in this shell."""
from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from openmagvit2.launch.plan import LaunchError, LaunchPlan
from openmagvit2.launch.render import render_script


@dataclass(frozen=True)
class Submission:
    """What was submitted: the SLURM job id (None for a local run), the run dir, the script and its log."""

    job_id: str | None
    run_dir: Path
    script: Path | None
    log: Path | None
    exit_code: int = 0


def local_command(plan: LaunchPlan) -> list[str]:
    """The command ``cluster=local`` runs: train.py directly, or under torchrun for several processes."""
    tail = [str(plan.entry), *plan.overrides, f"hydra.run.dir={plan.run_dir}"]
    if plan.job == "train":
        tail.append(f"train.resume={plan.initial_resume}")
    if plan.tasks_per_node == 1:
        return [plan.python, *tail]
    # Our thin torchrun: pre-emption signals reach the workers and the exit code stays 75 (launch/torchrun.py).
    return [plan.python, "-m", "openmagvit2.launch.torchrun", "--standalone",
            f"--nproc-per-node={plan.tasks_per_node}", *tail]


def write_script(plan: LaunchPlan, command_overrides: list[str]) -> Path:
    """Render the job script into ``<run dir>/slurm/<job>.sbatch`` (creating the log directory SLURM needs)."""
    script = render_script(plan, command_overrides)
    plan.script_path.parent.mkdir(parents=True, exist_ok=True)
    plan.script_path.write_text(script)
    plan.script_path.chmod(0o755)
    return plan.script_path


def parse_job_id(sbatch_stdout: str) -> str:
    """The job id from ``sbatch --parsable`` output (``1234`` or ``1234;cluster``)."""
    first = sbatch_stdout.strip().splitlines()[0] if sbatch_stdout.strip() else ""
    job_id = first.split(";")[0]
    if not job_id.isdigit():
        raise LaunchError(f"sbatch printed {sbatch_stdout.strip()!r} instead of a job id; check the output above.")
    return job_id


def submit_plan(plan: LaunchPlan, command_overrides: list[str]) -> Submission:
    """Submit ``plan``: ``sbatch`` the rendered script, or run the local command and wait for it."""
    if plan.cluster["launcher"] == "local":
        command = local_command(plan)
        print(f"running: {shlex.join(command)}", flush=True)
        exit_code = subprocess.run(command, cwd=plan.workdir).returncode
        return Submission(job_id=None, run_dir=plan.run_dir, script=None, log=None, exit_code=exit_code)
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise LaunchError("sbatch is not on PATH: run this on a SLURM login node, or use `python -m "
                          "openmagvit2.launch render ...` to write the script and submit it there.")
    script = write_script(plan, command_overrides)
    done = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise LaunchError(f"sbatch refused {script}: {done.stderr.strip() or done.stdout.strip()}")
    job_id = parse_job_id(done.stdout)
    log = Path(str(plan.log_path).replace("%j", job_id))
    return Submission(job_id=job_id, run_dir=plan.run_dir, script=script, log=log)
