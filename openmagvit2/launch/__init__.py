"""Render and submit SLURM job scripts (``launch/*.sbatch``) from the composed Hydra config.

    python -m openmagvit2.launch submit cluster=slurm_32gpu experiment=in256_base [overrides]
    python -m openmagvit2.launch render cluster=slurm_32gpu experiment=in256_base [overrides]

``plan`` composes the config and refuses impossible allocations before anything is written; ``render`` fills a
template and checks the result; ``submit`` hands it to ``sbatch`` (or runs it in this shell for ``cluster=local``).
``torchrun`` (``python -m openmagvit2.launch.torchrun``) is torchrun with pre-emption signals forwarded and exit 75
kept; ``submitit_launcher`` gives sweep jobs the same checkpoint-and-requeue contract as ``launch/train.sbatch``.
"""
from openmagvit2.launch.plan import JOBS, LaunchError, LaunchPlan, compose_config, make_plan, validate_plan
from openmagvit2.launch.render import render_script, render_template
from openmagvit2.launch.submit import Submission, submit_plan

__all__ = [
    "JOBS",
    "LaunchError",
    "LaunchPlan",
    "Submission",
    "compose_config",
    "make_plan",
    "render_script",
    "render_template",
    "submit_plan",
    "validate_plan",
]
