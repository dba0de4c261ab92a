"""Compose the Hydra config for a launch and turn it into a validated :class:`LaunchPlan`.

Everything a user can get wrong about an allocation is refused here, before a script is written or a job queued:
a process layout that does not match the batch plan, GPUs per node 0 for a GPU run, a data path that does not exist,
a malformed time limit.  Each refusal is one sentence that names the key and what to change.
"""
from __future__ import annotations

import datetime
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from openmagvit2.config import ConfigError
from openmagvit2.train.global_batch import global_batch_mismatch

REPO_DIR = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_DIR = REPO_DIR / "conf"
TEMPLATE_DIR = REPO_DIR / "launch"


@dataclass(frozen=True)
class JobKind:
    """What a job runs: the Hydra config it composes, the entry-point script and the SLURM template."""

    config_name: str
    entry: str
    template: str


JOBS: dict[str, JobKind] = {
    "train": JobKind(config_name="config", entry="train.py", template="train.sbatch"),
    "eval": JobKind(config_name="eval", entry="eval.py", template="eval.sbatch"),
}

# Data keys that name files or directories (per data source); the ones present in `data` are checked, and so is
# eval.py's `ckpt`.
DATA_PATH_KEYS = ("root", "train_dir", "val_dir", "shards", "val_shards", "path")
# Overrides the job script sets itself (the run dir is fixed at render time so that requeued attempts reuse it).
_SCRIPT_OWNED = ("hydra.run.dir", "train.resume")
_SBATCH_TOKEN = re.compile(r"^[A-Za-z0-9_.,:+=@%&|\[\]*/-]+$")
_TIME_LIMIT = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d{2}))?(?::(\d{2}))?$")
_MEMORY = re.compile(r"^\d+[KMGT]?$")


class LaunchError(ConfigError):
    """A launch that cannot work as configured; the message says what is wrong and how to fix it.

    A :class:`~openmagvit2.config.ConfigError`: whatever catches a bad config also catches a bad allocation.
    """


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to render one job script.

    ``cluster`` is the resolved ``cluster`` group; ``overrides`` are the user's Hydra overrides passed verbatim to
    the entry point (minus the ones the script owns: ``hydra.run.dir`` and ``train.resume``).
    """

    job: str
    cluster: dict[str, Any]
    overrides: tuple[str, ...]
    run_dir: Path
    workdir: Path
    entry: Path
    template: Path
    python: str
    device: str
    batch_size: int | None
    global_batch_size: int | None
    initial_resume: str
    data_paths: dict[str, Any]

    @property
    def tasks_per_node(self) -> int:
        return int(self.cluster["processes_per_node"])

    @property
    def world_size(self) -> int:
        return int(self.cluster["nodes"]) * self.tasks_per_node

    @property
    def log_path(self) -> Path:
        """SLURM's stdout/stderr file for the job (``%j`` is the job id; attempts append to the same file)."""
        return self.run_dir / "slurm" / f"{self.job}-%j.out"

    @property
    def script_path(self) -> Path:
        return self.run_dir / "slurm" / f"{self.job}.sbatch"


def compose_config(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig:
    """Compose ``config_name`` from ``config_dir`` with Hydra overrides, as the entry point itself would."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    if not (config_dir / f"{config_name}.yaml").is_file():
        raise LaunchError(f"{config_dir / (config_name + '.yaml')} does not exist; pass --config-dir pointing at the "
                          "project's conf/ directory.")
    try:
        with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))
    except HydraException as error:
        raise LaunchError(f"the overrides do not compose: {error}") from None


def _split_overrides(overrides: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separate the overrides the job script owns (``hydra.run.dir``, ``train.resume``) from the rest."""
    kept, owned = [], {}
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if sep and key in _SCRIPT_OWNED:
            owned[key] = value
        elif override in ("-m", "--multirun"):
            raise LaunchError("multirun sweeps are not submitted through this command; run "
                              "`python train.py -m hydra/launcher=submitit_slurm ...` instead (see sweep/README.md).")
        else:
            kept.append(override)
    return kept, owned


def _default_run_dir(cluster: dict[str, Any], experiment_name: str, now: datetime.datetime, workdir: Path) -> Path:
    """``<run_root>/<experiment_name>/<date>/<time>`` like the trainer's own default, made absolute and unique."""
    base = Path(cluster.get("run_root") or "runs").expanduser()
    run_dir = (base if base.is_absolute() else workdir / base) / experiment_name / now.strftime("%Y-%m-%d/%H-%M-%S")
    candidate, n = run_dir, 1
    while candidate.exists():  # two submissions within one second get distinct directories
        candidate, n = run_dir.with_name(f"{run_dir.name}-{n}"), n + 1
    return candidate


def make_plan(job: str, overrides: list[str], config_dir: Path = DEFAULT_CONFIG_DIR,
              now: datetime.datetime | None = None) -> LaunchPlan:
    """Compose the config for ``job`` (``train`` or ``eval``) with ``overrides`` and build its launch plan."""
    if job not in JOBS:
        raise LaunchError(f"unknown job {job!r}; choose one of {', '.join(JOBS)}.")
    kind = JOBS[job]
    kept, owned = _split_overrides(list(overrides))
    if kind.config_name == "config":
        cfg = compose_config(Path(config_dir), "config", kept + [f"{k}={v}" for k, v in owned.items()
                                                                 if k != "hydra.run.dir"])
        cluster_cfg = cfg.get("cluster")
    else:
        # eval.yaml has no cluster group: the cluster overrides compose against the training config, and only the
        # rest reach eval.py.
        is_cluster = [o.lstrip("+~").split("=")[0].split(".")[0] == "cluster" for o in kept]
        cluster_overrides = [o for o, c in zip(kept, is_cluster) if c]
        kept = [o for o, c in zip(kept, is_cluster) if not c]
        cfg = compose_config(Path(config_dir), kind.config_name, kept)
        cluster_cfg = compose_config(Path(config_dir), "config", cluster_overrides).get("cluster")
    if cluster_cfg is None:
        raise LaunchError("the composed config has no `cluster` group; add `- cluster: local` to the defaults list "
                          "of conf/config.yaml.")
    cluster = OmegaConf.to_container(cluster_cfg, resolve=True)
    experiment_name = OmegaConf.select(cfg, "experiment_name", default=None)
    # The job runs in the directory the launcher was started from, so relative paths mean the same in both.
    workdir = Path.cwd()
    if "hydra.run.dir" in owned:
        run_dir = Path(owned["hydra.run.dir"]).expanduser()
        run_dir = run_dir if run_dir.is_absolute() else workdir / run_dir
    else:
        run_dir = _default_run_dir(cluster, str(experiment_name or job), now or datetime.datetime.now(), workdir)
    if not cluster.get("job_name"):
        cluster["job_name"] = f"{experiment_name or 'openmagvit2'}-{job}"
    data = OmegaConf.select(cfg, "data", default=None)
    data_paths = {}
    if isinstance(data, DictConfig):
        for key in DATA_PATH_KEYS:
            if key in data.keys():  # `in data` is False for a missing (???) value
                value = "???" if OmegaConf.is_missing(data, key) else data[key]
                data_paths[f"data.{key}"] = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
    if "ckpt" in cfg.keys():  # eval.py's checkpoint
        data_paths["ckpt"] = "???" if OmegaConf.is_missing(cfg, "ckpt") else cfg.ckpt
    batch_size = OmegaConf.select(cfg, "train.batch_size", default=None)
    global_batch = OmegaConf.select(cfg, "train.global_batch_size", default=None)
    return LaunchPlan(
        job=job,
        cluster=cluster,
        overrides=tuple(kept),
        run_dir=run_dir.resolve(),
        workdir=workdir,
        entry=Path(config_dir).resolve().parent / kind.entry,
        template=TEMPLATE_DIR / kind.template,
        python=str(cluster.get("python") or sys.executable),
        device=str(OmegaConf.select(cfg, "device", default="auto")),
        batch_size=None if batch_size is None else int(batch_size),
        global_batch_size=None if global_batch is None else int(global_batch),
        initial_resume=owned.get("train.resume", str(OmegaConf.select(cfg, "train.resume", default="auto"))),
        data_paths=data_paths,
    )


def time_limit_seconds(limit: str) -> int:
    """Seconds in a SLURM time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``)."""
    match = _TIME_LIMIT.match(str(limit))
    if not match:
        raise LaunchError(f"cluster.time={limit!r} is not a SLURM time limit; write it as HH:MM:SS or D-HH:MM:SS.")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if third is not None:  # HH:MM:SS
        return (int(first) * 60 + int(second)) * 60 + int(third)
    if second is not None:  # MM:SS
        return int(first) * 60 + int(second)
    return int(first) * 60  # MM


def _require_int(cluster: dict[str, Any], key: str, minimum: int, meaning: str) -> int:
    value = cluster.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise LaunchError(f"cluster.{key}={value!r} is invalid: expected an integer >= {minimum} ({meaning}).")
    return value


def _missing_paths(value: Any, workdir: Path) -> list[str]:
    """Local paths named by a data key that do not exist (brace patterns expanded; URLs and pipes skipped).

    Relative paths are taken from ``workdir``, the directory the job runs in.
    """
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    missing = []
    for item in values:
        text = str(item)
        if "://" in text or text.startswith("pipe:"):
            continue
        from braceexpand import braceexpand

        missing.extend(p for p in braceexpand(text) if not (workdir / Path(p).expanduser()).exists())
    return missing


def _validate_layout(plan: LaunchPlan) -> None:
    c = plan.cluster
    if c.get("launcher") not in ("slurm", "local"):
        raise LaunchError(f"cluster.launcher={c.get('launcher')!r} is invalid: expected slurm or local.")
    nodes = _require_int(c, "nodes", 1, "nodes in the allocation")
    gpus = _require_int(c, "gpus_per_node", 0, "GPUs per node; 0 for a CPU-only job")
    if gpus == 0 and plan.device != "cpu":
        raise LaunchError(f"cluster.gpus_per_node=0 but device={plan.device}: ask for GPUs (e.g. "
                          "cluster.gpus_per_node=8) or run on CPU with device=cpu.")
    procs = _require_int(c, "processes_per_node", 1, "training processes per node, one per GPU")
    _require_int(c, "cpus_per_task", 1, "CPU cores per process, for data loading")
    if gpus > 0 and plan.device == "cpu":
        raise LaunchError(f"device=cpu but cluster.gpus_per_node={gpus}: set device=cuda, or "
                          "cluster.gpus_per_node=0 for a CPU-only job.")
    if gpus > 0 and procs != gpus:
        raise LaunchError(f"cluster.processes_per_node={procs} must equal cluster.gpus_per_node={gpus} (one training "
                          f"process per GPU); set cluster.processes_per_node={gpus}.")
    if c["launcher"] == "local" and nodes != 1:
        raise LaunchError(f"cluster={c.get('name')} runs on this machine, so cluster.nodes must be 1 (got {nodes}); "
                          "use a SLURM cluster config for several nodes.")


def _validate_batch_plan(plan: LaunchPlan) -> None:
    if plan.job != "train" or plan.batch_size is None:
        return
    problem = global_batch_mismatch(plan.global_batch_size, plan.batch_size, plan.world_size, plan.tasks_per_node)
    if problem:
        raise LaunchError(problem)


def _validate_slurm_options(plan: LaunchPlan) -> None:
    c = plan.cluster
    for key in ("job_name", "partition", "account", "qos", "constraint"):
        value = c.get(key)
        if value is not None and not _SBATCH_TOKEN.match(str(value)):
            raise LaunchError(f"cluster.{key}={value!r} contains spaces or quotes, which #SBATCH lines cannot carry; "
                              "use letters, digits and - _ . only.")
    if c.get("mem") is not None and not _MEMORY.match(str(c["mem"])):
        raise LaunchError(f"cluster.mem={c['mem']!r} is invalid: expected a size such as 480G, or null.")
    limit_s = time_limit_seconds(str(c.get("time")))
    lead_s = _require_int(c, "signal_lead_s", 1, "seconds before the time limit at which SIGUSR1 asks for a checkpoint")
    if lead_s >= limit_s:
        raise LaunchError(f"cluster.signal_lead_s={lead_s} is not shorter than cluster.time={c['time']} "
                          f"({limit_s} s); lower the lead or raise the time limit.")
    _require_int(c, "max_requeues", 0, "how often a pre-empted job requeues itself")
    _require_int(c, "straggler_wait_s", 1, "seconds srun waits for the other processes after the first exits")
    for key in ("setup", "sbatch_extra"):
        if not isinstance(c.get(key, []), list):
            raise LaunchError(f"cluster.{key} must be a list of strings, e.g. [\"module load cuda\"].")
    if not isinstance(c.get("env", {}), dict):
        raise LaunchError("cluster.env must be a mapping of environment variables, e.g. {NCCL_DEBUG: WARN}.")


def _validate_paths(plan: LaunchPlan) -> None:
    if not plan.entry.is_file():
        raise LaunchError(f"{plan.entry} does not exist; run the launcher from a checkout of the project "
                          "(or pass --config-dir <checkout>/conf).")
    if not plan.cluster.get("check_paths", True):
        return
    for key, value in plan.data_paths.items():
        if value is None:
            continue
        if value == "???":
            raise LaunchError(f"{key} is not set; pass {key}=/path/to/it on the command line.")
        missing = _missing_paths(value, plan.workdir)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise LaunchError(f"{key} names {missing[0]}{more}, which does not exist on this machine; fix the path, "
                              "or set cluster.check_paths=false if only the compute nodes can see it.")


def validate_plan(plan: LaunchPlan) -> None:
    """Raise :class:`LaunchError` for the first problem that would make the job fail or waste its allocation."""
    _validate_layout(plan)
    _validate_batch_plan(plan)
    if plan.cluster["launcher"] == "slurm":
        _validate_slurm_options(plan)
    _validate_paths(plan)
