"""openmagvit2's submitit launcher for sweeps, in the `hydra_plugins` namespace package where Hydra looks for
launchers: hydra-submitit-launcher's `SlurmLauncher` with the pre-emption contract of launch/train.sbatch
(openmagvit2/launch/submitit_launcher.py has the why and the how)."""
from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher

from openmagvit2.launch.submitit_launcher import PASS_CPUS_TO_SRUN, requeue_after_checkpoint
from openmagvit2.train.signals import REQUEUE_EXIT_CODE


class SlurmLauncher(_SubmititSlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher whose jobs requeue themselves after a checkpoint (exit 75), and
    whose tasks get `cpus_per_task` CPUs each."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.params["setup"] = [PASS_CPUS_TO_SRUN, *(self.params.get("setup") or [])]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except SystemExit as stop:  # train.py's main() ends a pre-empted run with sys.exit(75)
            if stop.code == REQUEUE_EXIT_CODE:
                requeue_after_checkpoint(int(self.params.get("max_num_timeout") or 0))
            raise
