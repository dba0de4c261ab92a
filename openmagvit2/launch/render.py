"""Fill a ``launch/*.sbatch`` template from a :class:`LaunchPlan` and check that the result is a valid script.

Templates use ``{{ name }}`` placeholders (not ``$name``, which bash itself uses).  Every value that lands in a shell
assignment is quoted with :func:`shlex.quote`, so overrides containing spaces, quotes or ``$`` reach train.py
unchanged.  A placeholder without a value, or a script ``bash -n`` rejects, is an error, never a silent blank.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from openmagvit2.launch.plan import LaunchError, LaunchPlan
from openmagvit2.train.signals import REQUEUE_EXIT_CODE

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def render_template(template: str, values: dict[str, str]) -> str:
    """Replace every ``{{ name }}`` in ``template`` with ``values[name]``; unknown names raise :class:`LaunchError`."""
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - set(values))
    if unknown:
        raise LaunchError(f"the template uses {', '.join(unknown)} but the launcher provides no value for it; "
                          "check the placeholder names in launch/*.sbatch.")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _sbatch_options(plan: LaunchPlan) -> str:
    """Optional ``#SBATCH`` lines: GPUs, partition, account, QoS, memory, constraint, and ``cluster.sbatch_extra``."""
    c = plan.cluster
    lines = [f"#SBATCH --gpus-per-node={c['gpus_per_node']}"] if c["gpus_per_node"] > 0 else []
    for key in ("partition", "account", "qos", "mem", "constraint"):
        if c.get(key) is not None:
            lines.append(f"#SBATCH --{key}={c[key]}")
    for option in c.get("sbatch_extra") or []:
        option = str(option).strip()
        if "\n" in option or not option.startswith("--"):
            raise LaunchError(f"cluster.sbatch_extra entry {option!r} is not one sbatch option; write it like "
                              "\"--exclusive\" or \"--mail-type=END\".")
        lines.append(f"#SBATCH {option}")
    return "\n".join(lines)


def _setup_lines(plan: LaunchPlan) -> str:
    lines = [str(line) for line in plan.cluster.get("setup") or []]
    return "\n".join(["# set-up commands (cluster.setup)", *lines]) if lines else "# no set-up commands (cluster.setup)"


def _env_lines(plan: LaunchPlan) -> str:
    env = plan.cluster.get("env") or {}
    for name in env:
        if not _ENV_NAME.match(str(name)):
            raise LaunchError(f"cluster.env has the key {name!r}, which is not an environment variable name.")
    lines = [f"export {name}={shlex.quote(str(value))}" for name, value in env.items()]
    return "\n".join(["# environment (cluster.env)", *lines]) if lines else "# no extra environment (cluster.env)"


def template_values(plan: LaunchPlan, command_overrides: list[str]) -> dict[str, str]:
    """The strings that fill the placeholders of ``plan.template`` (shell values already quoted)."""
    for label, path in (("run dir", plan.run_dir), ("working directory", plan.workdir)):
        if any(ch.isspace() for ch in str(path)):
            raise LaunchError(f"the {label} {path} contains whitespace, which #SBATCH lines cannot carry; choose a "
                              "path without spaces (hydra.run.dir=... or cluster.run_root=...).")
    c = plan.cluster
    return {
        "job_name": str(c["job_name"]),
        "cluster_name": str(c.get("name", "?")),
        "command_overrides": " ".join(command_overrides).replace("\n", " "),
        "nodes": str(c["nodes"]),
        "tasks_per_node": str(plan.tasks_per_node),
        "world_size": str(plan.world_size),
        "cpus_per_task": str(c["cpus_per_task"]),
        "time": str(c["time"]),
        "signal_lead_s": str(c.get("signal_lead_s")),
        "log_path": str(plan.log_path),
        "workdir": str(plan.workdir),
        "sbatch_options": _sbatch_options(plan),
        "run_dir": shlex.quote(str(plan.run_dir)),
        "script_path": shlex.quote(str(plan.script_path)),
        "python": shlex.quote(plan.python),
        "entry": shlex.quote(str(plan.entry)),
        "overrides": " ".join(shlex.quote(o) for o in plan.overrides),
        "initial_resume": shlex.quote(plan.initial_resume),
        "max_requeues": str(c.get("max_requeues")),
        "requeue_exit_code": str(REQUEUE_EXIT_CODE),
        "straggler_wait_s": str(c.get("straggler_wait_s")),
        "setup": _setup_lines(plan),
        "env": _env_lines(plan),
    }


def check_script(script: str) -> None:
    """Refuse a rendered script with leftover placeholders or a bash syntax error."""
    leftover = _PLACEHOLDER.search(script)
    if leftover:
        raise LaunchError(f"the rendered script still contains {leftover.group(0)}; the template and the launcher "
                          "disagree.")
    bash = shutil.which("bash")
    if bash is None:
        return
    checked = subprocess.run([bash, "-n"], input=script, capture_output=True, text=True)
    if checked.returncode != 0:
        raise LaunchError(f"the rendered script is not valid bash ({checked.stderr.strip()}); check cluster.setup "
                          "and cluster.env.")


def render_script(plan: LaunchPlan, command_overrides: list[str] | None = None) -> str:
    """Render ``plan.template`` for ``plan`` and check it; returns the job script's text."""
    template = Path(plan.template).read_text()
    script = render_template(template, template_values(plan, list(command_overrides or plan.overrides)))
    check_script(script)
    return script
