"""Resuming with a changed config: architecture changes refused in one line, recipe changes warned, EMA kept."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FAST, run_entry_point
from openmagvit2.train.checkpoint import latest_checkpoint, load
from openmagvit2.train.resume import ResumeMismatch
from test_train import train_in_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run dir with a checkpoint at step 2 (EMA on)."""
    run_dir = tmp_path_factory.mktemp("run")
    assert train_in_process(["train.max_steps=2", "train.ckpt_every=2", "train.ema_decay=0.9"], run_dir) == 0
    return run_dir


def copy_run(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    (target / "checkpoints").mkdir()
    checkpoint = latest_checkpoint(source)
    (target / "checkpoints" / checkpoint.name).write_bytes(checkpoint.read_bytes())
    return target


@pytest.mark.parametrize("override, key", [("model.ch=64", "model.ch"),
                                           ("quantizer.codebook_bits=12", "quantizer.codebook_bits"),
                                           ("loss.disc_channels=24", "loss.disc_channels")])
def test_architecture_changes_are_refused_naming_the_key(trained: Path, tmp_path: Path, override: str,
                                                         key: str) -> None:
    run_dir = copy_run(trained, tmp_path / "run")
    with pytest.raises(ResumeMismatch, match=rf"cannot resume .*{key}=.* in the checkpoint but .* now") as error:
        train_in_process([override, "train.max_steps=4", "train.ema_decay=0.9"], run_dir)
    assert "\n" not in str(error.value)


def test_cli_refusal_is_one_line_with_exit_code_2(trained: Path, tmp_path: Path) -> None:
    run_dir = copy_run(trained, tmp_path / "run")
    result = run_entry_point(["train.py", *FAST, "model.ch=64", "train.max_steps=4",
                              "train.ema_decay=0.9", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "error: cannot resume" in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1, result.stderr


def test_max_steps_below_the_checkpoint_is_refused(trained: Path, tmp_path: Path) -> None:
    run_dir = copy_run(trained, tmp_path / "run")
    with pytest.raises(ResumeMismatch, match="train.max_steps=1 is below the step"):
        train_in_process(["train.max_steps=1", "train.ema_decay=0.9"], run_dir)


def test_recipe_changes_are_warned_and_the_ema_is_kept(trained: Path, tmp_path: Path) -> None:
    run_dir = copy_run(trained, tmp_path / "run")
    assert train_in_process(["train.max_steps=3", "train.ckpt_every=1", "train.ema_decay=null", "optim.lr=0.0002"],
                            run_dir) == 0
    log = (run_dir / "train.log").read_text()
    assert "warning: resuming with optim.lr=0.0002" in log
    assert "train.ema_decay=null but" in log and "kept" in log
    state = load(latest_checkpoint(run_dir))
    assert state["step"] == 3 and state["generator_ema"] is not None and state["ema"]["num_updates"] == 3
