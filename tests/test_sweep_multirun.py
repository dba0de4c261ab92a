"""Hydra multirun sweeps: the options of the conf/sweep/ group compose, and `python train.py sweep=demo` (a local 2 x 2
sweep of the demo) produces four run directories with four distinct configs, each trained to completion."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import CONF_DIR, ROOT

SWEEP_FILES = sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))


def compose_sweep(name: str, overrides: list[str] = ()):
    """Compose `sweep=<name>` the way `python train.py sweep=<name>` does (hydra node included)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", return_hydra_config=True, overrides=[f"sweep={name}", *overrides])


def test_there_are_sweeps_for_the_demo_and_the_recipe() -> None:
    assert {"demo", "in256_entropy_lecam"} <= set(SWEEP_FILES)


@pytest.mark.parametrize("name", SWEEP_FILES)
def test_sweep_files_compose_and_sweep_existing_keys(name: str) -> None:
    cfg = compose_sweep(name)
    assert cfg.hydra.mode == RunMode.MULTIRUN  # `sweep=<name>` alone starts the multirun
    params = cfg.hydra.sweeper.params
    assert len(params) >= 2
    for key, values in params.items():
        # A typo in a swept key would only surface when the first job starts: catch it here.
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", f"{name}.yaml sweeps unknown key {key}"
        assert len(str(values).split(",")) >= 2, f"{name}.yaml sweeps {key} over a single value"
    assert cfg.experiment_name in {"demo", "in256_base"}


def test_recipe_sweep_runs_on_32_gpus_per_job() -> None:
    cfg = compose_sweep("in256_entropy_lecam", ["hydra/launcher=submitit_32gpu"])
    launcher = cfg.hydra.launcher
    # Our subclass: a checkpoint after the pre-emption warning requeues the job (openmagvit2/launch/submitit_launcher.py)
    assert launcher._target_ == "hydra_plugins.openmagvit2_submitit.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (4, 8, 8)
    assert launcher.nodes * launcher.tasks_per_node * cfg.train.batch_size == 256  # the recipe's global batch
    assert cfg.loss.lecam_weight == 0.005 and cfg.data.name == "imagenet_wds"  # the experiment is applied


def test_slurm_test_cluster_preset_composes_from_conf() -> None:
    # tests/test_slurm_e2e.py runs `train.py -m hydra/launcher=submitit_slurm_local experiment=demo ...`.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=submitit_slurm_local", "experiment=demo"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node, cfg.hydra.launcher.cpus_per_task) == (1, 1, 1)


@pytest.mark.slow
def test_local_multirun_2x2_gives_four_distinct_runs(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "sweep=demo", "debug=fast", f"hydra.sweep.dir={sweep_dir}",
         "train.max_steps=1", "train.batch_size=2", "train.eval_images=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name for p in run_dirs] == ["0", "1", "2", "3"]
    combos = []
    for run_dir in run_dirs:
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        combos.append((cfg.quantizer.codebook_bits, cfg.loss.codebook_weight))
        assert (run_dir / "COMPLETED").read_text().strip() == "1"
        state = torch.load(run_dir / "checkpoints" / "step_00000001.pt", weights_only=True)
        # What each job trained is what its config says: the swept values reached the model and the loss.
        assert state["tokenizer_hparams"]["codebook_bits"] == cfg.quantizer.codebook_bits
        assert state["config"]["loss"]["codebook_weight"] == cfg.loss.codebook_weight
    assert sorted(combos) == sorted(itertools.product([4, 6], [0.05, 0.1]))


def test_submitit_jobs_pass_cpus_to_srun_and_requeue_only_a_running_job(tmp_path: Path, monkeypatch) -> None:
    from hydra.utils import instantiate

    from openmagvit2.launch.submitit_launcher import PASS_CPUS_TO_SRUN, requeue_after_checkpoint

    launcher = instantiate(compose_sweep("demo", ["hydra/launcher=submitit_slurm_local"]).hydra.launcher)
    assert launcher.params["setup"][0] == PASS_CPUS_TO_SRUN
    # A stand-in scontrol: reports the state in $FAKE_STATE and records requeue calls.
    calls = tmp_path / "calls"
    fake = tmp_path / "scontrol"
    fake.write_text(f'#!/bin/sh\nif [ "$1" = requeue ]; then echo "$@" >> {calls}; exit 0; fi\n'
                    'echo "JobId=7 JobName=x JobState=$FAKE_STATE Restarts=0"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("FAKE_STATE", "CANCELLED")  # scancel: the checkpoint stays, the job is not requeued
    assert requeue_after_checkpoint(max_requeues=3) is False and not calls.exists()
    monkeypatch.setenv("FAKE_STATE", "RUNNING")  # the pre-emption warning: requeue
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    assert requeue_after_checkpoint(max_requeues=3) is False  # ... unless it was requeued often enough
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert requeue_after_checkpoint(max_requeues=3) is False  # only rank 0 decides
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert requeue_after_checkpoint(max_requeues=3) is True
    assert calls.read_text() == "requeue 7\n"
