"""Start and stop a real one-node SLURM cluster (munged + slurmctld + slurmd) in a directory of its own.

Why a real cluster: the job scripts in ``launch/`` rely on SLURM behaviour that no mock reproduces faithfully
(``srun`` task layout and environment, signal delivery to job steps, ``scontrol requeue`` from inside a job,
``--open-mode=append`` across attempts).  Everything lives under one directory: its own ``slurm.conf``, its own
munge socket, state and logs, free TCP ports, so nothing on the host (``/etc/slurm``, a system munged) is touched.
Clients find this cluster through ``SLURM_CONF``, which :meth:`SlurmCluster.env` sets.

Needs root (the daemons run as root) and Debian's ``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge``;
:func:`missing_requirement` says why the cluster cannot be started here, and :meth:`SlurmCluster.ensure_installed`
installs the packages with ``apt-get`` when they are missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "sinfo", "scancel", "munged", "munge")
# A requeued job may only start again once its launch credential has expired (slurm.conf: AuthInfo
# cred_expire, default 120 s).  A short lifetime keeps the requeue test at seconds instead of minutes.
CRED_EXPIRE_S = 10


def missing_requirement() -> str | None:
    """Return why a cluster cannot be started on this machine, or None when it can (maybe after apt-get)."""
    if all(shutil.which(b) for b in BINARIES):
        return None if os.geteuid() == 0 else "the SLURM daemons in the test cluster must run as root"
    if os.geteuid() != 0:
        return "SLURM is not installed and installing it with apt-get needs root"
    if shutil.which("apt-get") is None:
        return "SLURM is not installed and apt-get is not available to install it"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class SlurmCluster:
    """A one-node SLURM cluster whose files all live under ``root``.

    Use as a context manager: ``with SlurmCluster(tmp) as cluster: cluster.run(["sbatch", ...])``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 1
        self._munged_pid: int | None = None

    # -- set-up -----------------------------------------------------------------------------------------------
    @staticmethod
    def ensure_installed() -> None:
        """Install the Debian packages with apt-get when any SLURM or munge binary is missing."""
        if all(shutil.which(b) for b in BINARIES):
            return
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"apt-get install {' '.join(PACKAGES)} failed:\n"
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def env(self) -> dict[str, str]:
        """The environment for SLURM clients (sbatch, squeue, ...) talking to this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, args: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster and return its completed process (text output)."""
        done = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited with {done.returncode}: {done.stderr.strip()}")
        return done

    def _write_conf(self) -> None:
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=openmagvit2test",
                    f"SlurmctldHost={self.host}",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={r}/munge/munge.socket,cred_expire={CRED_EXPIRE_S}",
                    f"StateSaveLocation={r}/state",
                    f"SlurmdSpoolDir={r}/spool",
                    f"SlurmctldPidFile={r}/slurmctld.pid",
                    f"SlurmdPidFile={r}/slurmd.pid",
                    f"SlurmctldLogFile={r}/slurmctld.log",
                    f"SlurmdLogFile={r}/slurmd.log",
                    "ProctrackType=proctrack/linuxproc",
                    # task/affinity binds each task to its CPUs, so a rank sees (nproc) what srun gave it.
                    "TaskPlugin=task/affinity",
                    "SchedulerType=sched/backfill",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    "MpiDefault=none",
                    "JobRequeue=1",
                    "KillWait=10",
                    f"NodeName={self.host} CPUs={self.cpus} State=UNKNOWN",
                    f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )

    def _start_munged(self) -> None:
        mdir = self.root / "munge"
        os.chmod(self.root, 0o755)  # munged (user munge) must reach its directory inside the root-owned tree
        shutil.chown(mdir, "munge", "munge")
        os.chmod(mdir, 0o755)  # munged requires execute permission for all on its socket directory
        pid_file = mdir / "munged.pid"
        started = subprocess.run(
            [
                "runuser", "-u", "munge", "--", "munged",
                f"--socket={mdir}/munge.socket", f"--pid-file={pid_file}",
                f"--log-file={mdir}/munged.log", f"--seed-file={mdir}/munged.seed",
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if started.returncode != 0:
            raise RuntimeError(f"munged did not start: {started.stderr.strip()}")
        self._munged_pid = _read_pid(pid_file)

    def start(self, timeout_s: float = 30) -> None:
        """Write slurm.conf, start munged, slurmctld and slurmd, and wait until the node is idle."""
        self.ensure_installed()
        self._write_conf()
        try:
            self._start_munged()
            for daemon in (["slurmctld", "-c"], ["slurmd"]):
                done = subprocess.run([*daemon, "-f", str(self.conf)], env=self.env(), capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"{daemon[0]} did not start: {done.stderr.strip()} (logs in {self.root})")
            self._wait_until_idle(timeout_s)
        except BaseException:
            self.stop()  # never leave half a cluster running
            raise

    def _wait_until_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            done = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False)
            state = done.stdout.strip()
            if state.startswith("idle"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the test SLURM node did not become idle within {timeout_s} s (state {state!r}); "
                           f"see the logs in {self.root}")

    # -- tear-down --------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel remaining jobs, then stop slurmd, slurmctld and the munged this cluster started (by pid)."""
        if self.conf.exists():
            self.run(["scancel", "--full", "--user", "root"], check=False)
        pids = [_read_pid(self.root / f) for f in ("slurmd.pid", "slurmctld.pid")] + [self._munged_pid]
        for pid in pids:
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        self._munged_pid = None

    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- jobs -------------------------------------------------------------------------------------------------
    def job_state(self, job_id: str) -> str:
        """The job's state as ``scontrol show job`` reports it (PENDING, RUNNING, COMPLETED, FAILED, ...)."""
        out = self.run(["scontrol", "-o", "show", "job", job_id], check=False).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def job_field(self, job_id: str, name: str) -> str | None:
        """One ``Key=value`` field of ``scontrol -o show job`` (e.g. ``Restarts``), or None when absent."""
        out = self.run(["scontrol", "-o", "show", "job", job_id], check=False).stdout
        for field in out.split():
            if field.startswith(f"{name}="):
                return field.split("=", 1)[1]
        return None

    def wait_for(self, job_id: str, states: tuple[str, ...], timeout_s: float) -> str:
        """Poll until the job reaches one of ``states``; return the state, or raise with the state seen last."""
        deadline = time.monotonic() + timeout_s
        state = self.job_state(job_id)
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} did not reach {states} within {timeout_s} s (last state {state})")
