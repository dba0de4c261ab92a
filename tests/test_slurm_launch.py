"""The launcher without SLURM: composing the plan, refusing impossible allocations, rendering valid job scripts.

The scripts' behaviour under a real SLURM (training, pre-emption, requeue) is tested in test_slurm_e2e.py.
"""
from __future__ import annotations

import json

import datetime
import re
import subprocess
from pathlib import Path

import pytest

from openmagvit2.launch import LaunchError, make_plan, render_script, render_template, validate_plan
from openmagvit2.launch.__main__ import main
from openmagvit2.launch.plan import time_limit_seconds
from openmagvit2.launch.render import check_script

RECIPE = ["cluster=slurm_32gpu", "experiment=in256_base"]


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """A folder with what make_shards writes (empty shard files: only paths are checked, and the index JSONs)."""
    folder = tmp_path / "shards"
    folder.mkdir()
    for split, count in (("train", 1282), ("val", 50)):
        names = [f"{split}-{i:06d}.tar" for i in range(count)]
        for name in names:
            (folder / name).touch()
        (folder / f"{split}.json").write_text(json.dumps({"shards": [{"name": name, "count": 1000}
                                                                    for name in names]}))
    return folder


def sbatch_options(script: str) -> dict[str, str]:
    """``#SBATCH --key=value`` lines as a dict (``--requeue`` style flags map to an empty string)."""
    options = {}
    for key, _, value in re.findall(r"^#SBATCH --([\w-]+)(=(.*))?$", script, flags=re.M):
        options[key] = value
    return options


def bash_array(script: str, name: str) -> list[str]:
    """Evaluate the ``NAME=(...)`` line of a rendered script in bash and return the array's elements."""
    line = next(line for line in script.splitlines() if line.startswith(f"{name}=("))
    out = subprocess.run(["bash", "-c", f'{line}\nprintf "%s\\0" "${{{name}[@]}}"'], capture_output=True, text=True,
                         check=True).stdout
    return out.split("\0")[:-1]


def test_recipe_renders_a_32_gpu_job(shards: Path) -> None:
    plan = make_plan("train", [*RECIPE, f"data.root={shards}", "++train.global_batch_size=256"])
    validate_plan(plan)
    assert (plan.world_size, plan.tasks_per_node) == (32, 8)
    script = render_script(plan)
    options = sbatch_options(script)
    assert options["nodes"] == "4"
    assert options["ntasks-per-node"] == "8"
    assert options["gpus-per-node"] == "8"
    assert options["signal"] == "B:USR1@300"
    assert options["cpus-per-task"] == "10"
    # srun does not inherit --cpus-per-task from sbatch (Slurm >= 22.05): the step must ask for it itself.
    assert 'CPUS_PER_TASK=10 ' in script and 'srun --cpus-per-task="$CPUS_PER_TASK" ' in script
    assert "REQUEUE_EXIT_CODE=75 " in script and "15000" not in script  # both facts come from Python
    assert options["time"] == "48:00:00"
    assert options["output"] == f"{plan.run_dir}/slurm/train-%j.out"
    assert "requeue" in options and options["open-mode"] == "append"
    assert "partition" not in options and "account" not in options  # null knobs are left out
    assert "4 node(s) x 8 process(es) = 32 processes" in script
    assert f"RUN_DIR={plan.run_dir}" in script
    assert bash_array(script, "OVERRIDES") == [*RECIPE, f"data.root={shards}", "++train.global_batch_size=256"]


def test_overrides_reach_train_py_unchanged(shards: Path) -> None:
    tricky = ['logger.name="run with spaces"', "logger.tags=[a,b]", "train.resume=/ckpt/x.pt",
              "hydra.run.dir=/scratch/my_run", "cluster.partition=gpu-a100", "cluster.account=proj_1"]
    plan = make_plan("train", [*RECIPE, f"data.root={shards}", *tricky])
    script = render_script(plan)
    # The script owns the run dir and train.resume: they become knobs, not pass-through overrides.
    assert bash_array(script, "OVERRIDES") == [*RECIPE, f"data.root={shards}", *tricky[:2], *tricky[4:]]
    assert "RUN_DIR=/scratch/my_run" in script
    assert "INITIAL_RESUME=/ckpt/x.pt" in script
    options = sbatch_options(script)
    assert (options["partition"], options["account"]) == ("gpu-a100", "proj_1")


def test_default_run_dir_follows_the_trainer_layout_and_is_unique(shards, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    now = datetime.datetime(2026, 1, 2, 3, 4, 5)
    first = make_plan("train", [*RECIPE, f"data.root={shards}"], now=now)
    assert first.run_dir == tmp_path / "runs" / "in256_base" / "2026-01-02" / "03-04-05"
    assert first.workdir == tmp_path and first.cluster["job_name"] == "in256_base-train"
    first.run_dir.mkdir(parents=True)
    second = make_plan("train", [*RECIPE, f"data.root={shards}"], now=now)
    assert second.run_dir == first.run_dir.with_name("03-04-05-1")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["cluster.nodes=2", "++train.global_batch_size=256"],
         "2 node(s) x 8 process(es) x train.batch_size=8 = 128 images per step, but train.global_batch_size=256; "
         "set train.batch_size=16"),
        (["train.batch_size=16", "++train.global_batch_size=256"], "= 512 images per step"),
        (["cluster.gpus_per_node=0"], "cluster.gpus_per_node=0 but device=cuda"),
        (["cluster.processes_per_node=4"], "cluster.processes_per_node=4 must equal cluster.gpus_per_node=8"),
        (["cluster.nodes=0"], "cluster.nodes=0 is invalid"),
        (["cluster.time=2days"], "cluster.time='2days' is not a SLURM time limit"),
        (["cluster.time=00:04:00"], "cluster.signal_lead_s=300 is not shorter than cluster.time=00:04:00"),
        (["cluster.partition='gpu a100'"], "cluster.partition='gpu a100' contains spaces"),
        (["cluster.mem=lots"], "cluster.mem='lots' is invalid"),
        (["device=cpu"], "device=cpu but cluster.gpus_per_node=8"),
    ],
)
def test_impossible_allocations_are_refused(shards: Path, overrides: list[str], message: str) -> None:
    plan = make_plan("train", [*RECIPE, f"data.root={shards}", *overrides])
    with pytest.raises(LaunchError) as error:
        validate_plan(plan)
    assert message in str(error.value)


def test_missing_data_is_refused_naming_the_key(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=r"data.root names /no/such/imagenet, which does not exist"):
        validate_plan(make_plan("train", [*RECIPE, "data.root=/no/such/imagenet"]))
    (shards / "train-000007.tar").unlink()
    with pytest.raises(LaunchError, match=r"data.shards names .*train-000007.tar, which does not exist"):
        validate_plan(make_plan("train", [*RECIPE, f"data.root={shards}"]))
    # Paths only the compute nodes can see: the check can be switched off.
    validate_plan(make_plan("train", [*RECIPE, "data.root=/no/such/imagenet", "cluster.check_paths=false"]))


def test_eval_job_renders_without_requeue_logic(tmp_path: Path) -> None:
    ckpt = tmp_path / "step_00000010.pt"
    with pytest.raises(LaunchError, match="ckpt is not set"):
        validate_plan(make_plan("eval", ["cluster=slurm_32gpu", "device=cuda"]))
    ckpt.touch()
    plan = make_plan("eval", ["cluster=slurm_32gpu", "cluster.nodes=1", "device=cuda", f"ckpt={ckpt}"])
    validate_plan(plan)
    script = render_script(plan)
    options = sbatch_options(script)
    assert (options["nodes"], options["ntasks-per-node"], options["gpus-per-node"]) == ("1", "8", "8")
    assert "signal" not in options and "scontrol requeue" not in script
    assert 'srun --cpus-per-task="$CPUS_PER_TASK" ' in script and "15000" not in script
    assert plan.entry.name == "eval.py"
    # cluster.* overrides configure the allocation; eval.py never sees them.
    assert bash_array(script, "OVERRIDES") == ["device=cuda", f"ckpt={ckpt}"]


def test_setup_and_env_knobs_are_rendered_and_checked(shards: Path) -> None:
    plan = make_plan("train", [*RECIPE, f"data.root={shards}", "cluster.setup=[module load cuda/12.4]",
                               "+cluster.env.WANDB_DIR=/scratch/wandb dir", "cluster.sbatch_extra=[--exclusive]"])
    script = render_script(plan)
    assert "\nmodule load cuda/12.4\n" in script
    assert "\nexport WANDB_DIR='/scratch/wandb dir'\n" in script
    assert "\n#SBATCH --exclusive\n" in script
    broken = make_plan("train", [*RECIPE, f"data.root={shards}", "cluster.setup=[if then]"])
    with pytest.raises(LaunchError, match="not valid bash"):
        render_script(broken)


def test_template_placeholders_must_all_have_values() -> None:
    assert render_template("a={{ x }} b={{y}}", {"x": "1", "y": "2"}) == "a=1 b=2"
    with pytest.raises(LaunchError, match="uses missing"):
        render_template("{{ missing }}", {})
    with pytest.raises(LaunchError, match="still contains"):
        check_script("echo {{ left }}")


@pytest.mark.parametrize(("limit", "seconds"), [("30", 1800), ("10:30", 630), ("48:00:00", 172800),
                                                ("2-00", 172800), ("1-02:03", 93780), ("1-02:03:04", 93784)])
def test_time_limit_formats(limit: str, seconds: int) -> None:
    assert time_limit_seconds(limit) == seconds


def test_cli_render_and_refusal(shards: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out_file = tmp_path / "job.sbatch"
    assert main(["render", "--output", str(out_file), *RECIPE, f"data.root={shards}"]) == 0
    script = out_file.read_text()
    assert script.startswith("#!/bin/bash\n")
    # `sbatch job.sbatch` by hand must find the directory of its log: SLURM opens it before the script runs.
    log_path = Path(sbatch_options(script)["output"])
    assert log_path.parent.is_dir() and tmp_path / "runs" in log_path.parents
    capsys.readouterr()
    assert main(["submit", *RECIPE, f"data.root={shards}", "cluster.nodes=3", "++train.global_batch_size=256"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 3 node(s) x 8 process(es) x train.batch_size=8 = 192 images per step")
    assert err.count("\n") == 1  # one sentence, no traceback
    assert main(["render", "cluster=local", "experiment=demo", "cluster.processes_per_node=2"]) == 0
    command = capsys.readouterr().out
    assert "-m openmagvit2.launch.torchrun --standalone --nproc-per-node=2" in command and "train.resume=auto" in command


def test_launch_errors_are_config_errors_and_the_batch_rule_is_shared() -> None:
    from openmagvit2.config import ConfigError, check_global_batch

    assert issubclass(LaunchError, ConfigError)
    check_global_batch(8, None, 3)
    check_global_batch(8, 256, 32)
    with pytest.raises(ConfigError, match=r"^2 node\(s\) x 8 process\(es\) x train.batch_size=8 = 128 images per "
                                          r"step, but train.global_batch_size=256; set train.batch_size=16"):
        check_global_batch(8, 256, 16, layout="2 node(s) x 8 process(es)", processes_per_node=8)  # the launcher
    with pytest.raises(ConfigError, match=r"^3 process\(es\) x train.batch_size=8 = 24 images per step, but "
                                          r"train.global_batch_size=256; set another number of processes"):
        check_global_batch(8, 256, 3)  # the trainer's view: the world size it was given
