"""Compose the Hydra config for a launch and turn it into a validated :class:`LaunchPlan`.

Everything a user can get wrong about an allocation is refused here, before a script is written or a job queued:
a process layout that does not match the batch plan, GPUs per node 0 for a GPU run, a data path that does not exist,
a malformed time limit.  Each refusal is one sentence that names the key and what to change.  The bounds of each
``cluster.*`` key are the config schema's (``openmagvit2.config.ClusterConfig``); this module adds the checks that
combine the cluster with the rest of the config (device, batch plan, paths).
"""
from __future__ import annotations

import datetime
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from openmagvit2.config import ClusterConfig, ConfigError, check_global_batch
from openmagvit2.config import time_limit_seconds  # noqa: F401  (re-exported: callers import it from here)
from openmagvit2.paths import conf_dir, template_dir

DEFAULT_CONFIG_DIR = conf_dir()
TEMPLATE_DIR = template_dir()


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

# A launch that cannot work as configured is a config error like any other (one type, one place).
LaunchError = ConfigError


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
                              "`python train.py sweep=<name> hydra/launcher=submitit_32gpu ...` instead (see conf/sweep/README.md).")
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


def _missing_paths(value: Any, workdir: Path) -> list[str]:
    """Local paths named by a data key that do not exist (brace patterns expanded, shard indexes read for the shards
    they list, as the loaders do; URLs and pipes skipped). Relative paths are taken from ``workdir``, the directory
    the job runs in.
    """
    from openmagvit2.data.shards import expand_shards

    values = list(value) if isinstance(value, (list, tuple)) else [value]
    missing = []
    for item in values:
        text = str(item)
        if "://" in text or text.startswith("pipe:"):
            continue
        local = str(workdir / Path(text).expanduser())
        if text.endswith(".json") and not Path(local).is_file():
            missing.append(text)
            continue
        missing.extend(path for path in expand_shards(local) if not Path(path).exists())
    return missing


def _validate_layout(plan: LaunchPlan) -> None:
    # First (processes_per_node follows gpus_per_node in the SLURM configs, so 0 GPUs would read as 0 processes):
    if plan.cluster.get("gpus_per_node") == 0 and plan.device != "cpu":
        raise LaunchError(f"cluster.gpus_per_node=0 but device={plan.device}: ask for GPUs (e.g. "
                          "cluster.gpus_per_node=8) or run on CPU with device=cpu.")
    cluster = ClusterConfig(**plan.cluster)  # the schema's bounds of every cluster.* key
    gpus, procs = cluster.gpus_per_node, cluster.processes_per_node
    if gpus > 0 and plan.device == "cpu":
        raise LaunchError(f"device=cpu but cluster.gpus_per_node={gpus}: set device=cuda, or "
                          "cluster.gpus_per_node=0 for a CPU-only job.")
    if gpus > 0 and procs != gpus:
        raise LaunchError(f"cluster.processes_per_node={procs} must equal cluster.gpus_per_node={gpus} (one training "
                          f"process per GPU); set cluster.processes_per_node={gpus}.")
    if cluster.launcher == "local" and cluster.nodes != 1:
        raise LaunchError(f"cluster={cluster.name} runs on this machine, so cluster.nodes must be 1 (got "
                          f"{cluster.nodes}); use a SLURM cluster config for several nodes.")


def _validate_batch_plan(plan: LaunchPlan) -> None:
    if plan.job != "train" or plan.batch_size is None:
        return
    check_global_batch(plan.batch_size, plan.global_batch_size, plan.world_size,
                       layout=f"{plan.cluster['nodes']} node(s) x {plan.tasks_per_node} process(es)",
                       processes_per_node=plan.tasks_per_node)


def _validate_slurm_options(plan: LaunchPlan) -> None:
    for key in ("job_name", "partition", "account", "qos", "constraint"):
        value = plan.cluster.get(key)
        if value is not None and not _SBATCH_TOKEN.match(str(value)):
            raise LaunchError(f"cluster.{key}={value!r} contains spaces or quotes, which #SBATCH lines cannot carry; "
                              "use letters, digits and - _ . only.")


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
