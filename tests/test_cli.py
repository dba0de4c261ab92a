"""The command line before any work (issue 12, items 9 and 10): `+` typos refused with the close key, a short and
fast `--help` per entry point, and sweep jobs named by their swept keys only."""
from __future__ import annotations

import re
import time

import pytest
from conftest import FAST, run_entry_point

from openmagvit2.cli import help_text, swept_keys, sweep_run_name, unknown_addition


def test_an_addition_the_schema_lacks_is_refused_with_the_closest_key():
    message = unknown_addition(["experiment=demo", "+train.max_step=5"], "train", "sample")
    assert message == ("+train.max_step=5: train has no key 'max_step', so it would be ignored; did you mean "
                       "train.max_steps=5? (set existing keys without '+').")
    assert "did you mean data.val_shards=x?" in unknown_addition(["++data.val_shard=x"], "train", "imagenet_wds")
    assert "did you mean data.val_dir=/v?" in unknown_addition(["+data.val_dirr=/v"], "eval", "imagenet_folder")


def test_real_keys_hydra_keys_and_plain_overrides_pass():
    assert unknown_addition(["+train.max_steps=5", "train.max_stepz=1", "+hydra.job.env_set.A=1", "+seed2=1",
                             "+logger.tags=[a]"], "train", "sample") is None
    assert unknown_addition(["+loss.perceptual_weight=0"], "eval", "sample") is None  # eval has no loss schema


@pytest.mark.slow
def test_train_py_refuses_a_plus_typo_in_one_line_before_training(tmp_path):
    result = run_entry_point(["train.py", *FAST, "+train.max_step=5", "logger.mode=disabled",
                              f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "error: +train.max_step=5: train has no key 'max_step', so it would be ignored; did you mean "
        "train.max_steps=5? (set existing keys without '+')."]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_help_is_short_fast_and_example_led(script):
    started = time.monotonic()
    result = run_entry_point([script, "--help"])
    elapsed = time.monotonic() - started
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) < 40 and elapsed < 3.0, (len(lines), elapsed)
    assert lines[2] == "Examples" and f"python {script} " in result.stdout
    groups = {line.split()[0] for line in lines if re.match(r"^  [a-z]+ {2,}", line)}
    if script == "eval.py":
        assert groups == {"model", "quantizer", "data", "logger"}  # no training-only groups
        assert "ckpt=hf://" in result.stdout and "metrics=[psnr,ssim,usage]" in result.stdout
    else:
        assert {"experiment", "loss", "cluster", "sweep", "debug"} <= groups
        assert "demo" in help_text("train").split("experiment ")[1].split("\n")[0]


def test_sweep_names_use_the_swept_keys_only():
    argv = ["-m", "experiment=demo", "debug=fast", "train.max_steps=1", "quantizer.codebook_bits=4,6",
            "loss.codebook_weight=range(1,3)", "data.root='a,b'"]
    swept = swept_keys(argv, {"loss.lecam_weight": "0.001,0.005"})
    assert swept == ["loss.lecam_weight", "quantizer.codebook_bits", "loss.codebook_weight"]
    job = ["experiment=demo", "debug=fast", "train.max_steps=1", "quantizer.codebook_bits=6",
           "loss.codebook_weight=2", "loss.lecam_weight=0.005"]
    assert sweep_run_name(job, swept) == "loss.lecam_weight=0.005,quantizer.codebook_bits=6,loss.codebook_weight=2"
    assert sweep_run_name(["experiment=demo"], swept) is None


@pytest.mark.slow
def test_a_real_two_job_multirun_names_each_wandb_run_by_the_swept_key(tmp_path):
    result = run_entry_point(["train.py", "-m", *FAST, "train.max_steps=1", "quantizer.codebook_bits=4,6",
                              "logger.mode=offline", "train.eval_every=0", f"hydra.sweep.dir={tmp_path}"],
                             timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for job, bits in ((0, 4), (1, 6)):
        log = (tmp_path / str(job) / "train.log").read_text()
        named = re.search(r"W&B run \S+ named (\S+), group (\S+) \(offline\)", log)
        assert named, log
        assert named.group(1) == f"quantizer.codebook_bits={bits}"
        assert named.group(2) == str(tmp_path).strip("/").replace("/", "-")
