"""End-to-end training on CPU: exact resume, pre-emption, DDP equivalence, learning, W&B offline run."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import FAST, ROOT, compose_config, run_entry_point
from openmagvit2.train.checkpoint import latest_checkpoint, list_checkpoints, load
from openmagvit2.train.signals import REQUEUE_EXIT_CODE

pytestmark = pytest.mark.slow


def train_in_process(overrides: list[str], run_dir: Path) -> int:
    from train import train

    return train(compose_config(FAST + overrides), run_dir)  # train() validates the config first


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


def assert_same_optimizer(a: dict, b: dict, what: str) -> None:
    for index, state in a["state"].items():
        for name, value in state.items():
            other = b["state"][index][name]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), f"{what}: state {index}.{name}"


def test_resume_is_exact(tmp_path: Path) -> None:
    common = ["loss.disc_start=2", "train.ema_decay=0.9"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_in_process(common + ["train.max_steps=6", "train.ckpt_every=6"], straight) == 0
    assert train_in_process(common + ["train.max_steps=3", "train.ckpt_every=3"], split) == 0
    assert train_in_process(common + ["train.max_steps=6", "train.ckpt_every=3"], split) == 0
    assert "resumed from" in (split / "train.log").read_text()

    a, b = load(latest_checkpoint(straight)), load(latest_checkpoint(split))
    assert a["step"] == b["step"] == 6
    for part in ("generator", "generator_ema", "discriminator", "loss"):
        assert_same_tensors(a[part], b[part], part)
    assert_same_optimizer(a["opt_g"], b["opt_g"], "opt_g")
    assert_same_optimizer(a["opt_d"], b["opt_d"], "opt_d")
    assert a["data"] == b["data"]
    # The run with disc_start=2 really trained the discriminator and the LeCam state moved.
    assert any(v.abs().sum() > 0 for v in a["loss"].values() if isinstance(v, torch.Tensor))


def test_checkpoints_are_pruned_and_loadable_by_tokenizer(tmp_path: Path) -> None:
    from openmagvit2.models import Tokenizer

    assert train_in_process(["train.max_steps=4", "train.ckpt_every=1", "train.keep_last=2"], tmp_path) == 0
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003.pt", "step_00000004.pt"]
    assert (tmp_path / "COMPLETED").read_text().strip() == "4"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step"] == 4 and 0 < metrics["val/psnr"] < 100
    tokenizer = Tokenizer.from_checkpoint(latest_checkpoint(tmp_path))
    state = load(latest_checkpoint(tmp_path))
    for key, value in tokenizer.state_dict().items():
        assert torch.equal(value, state["generator_ema"][key]), key


def _start_training(run_dir: Path, max_steps: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "train.py", *FAST, f"train.max_steps={max_steps}",
                             "train.ckpt_every=100000", f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT],
                         ids=["SIGTERM", "SIGUSR1", "SIGUSR2-submitit", "SIGINT-ctrl-c"])
def test_preemption_signal_checkpoints_and_next_start_resumes(tmp_path: Path, signum: int) -> None:
    process = _start_training(tmp_path, max_steps=100000)
    lines = []
    deadline = time.monotonic() + 240
    for line in process.stdout:  # wait until training is really stepping
        lines.append(line)
        if line.startswith("step 3/") or time.monotonic() > deadline:
            break
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    log = "".join(lines) + output
    assert process.returncode == REQUEUE_EXIT_CODE, log
    saved = latest_checkpoint(tmp_path)
    assert saved is not None, log
    saved_step = load(saved)["step"]
    assert saved_step >= 3 and not (tmp_path / "COMPLETED").exists()

    result = run_entry_point(["train.py", *FAST, f"train.max_steps={saved_step + 2}",
                              "train.ckpt_every=100000", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resumed from {saved} at step {saved_step}" in result.stdout
    assert f"step {saved_step + 1}/{saved_step + 2}" in result.stdout
    assert load(latest_checkpoint(tmp_path))["step"] == saved_step + 2


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path: Path) -> None:
    process = _start_training(tmp_path, max_steps=100000)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("step 2/"):
            break
    process.send_signal(signal.SIGINT)
    for line in process.stdout:  # the first Ctrl-C is acknowledged...
        lines.append(line)
        if "Ctrl-C" in line:
            break
    process.send_signal(signal.SIGINT)  # ...and a second one, before the step ends or not, stops the run now
    output, _ = process.communicate(timeout=120)
    log = "".join(lines) + output
    assert process.returncode in (130, REQUEUE_EXIT_CODE), log  # 75 if the step boundary came first
    assert "Traceback" not in log, log


def test_two_process_ddp_matches_one_process_with_double_batch(tmp_path: Path) -> None:
    common = ["train.max_steps=1", "train.ckpt_every=1", "train.ema_decay=null", "loss.disc_norm=none",
              "quantizer.entropy_across_ranks=true", "loss.disc_start=0", "data.num_workers=0"]
    single = run_entry_point(["train.py", *FAST, *common, "train.batch_size=4",
                              f"hydra.run.dir={tmp_path / 'single'}"])
    assert single.returncode == 0, single.stdout + single.stderr
    double = run_entry_point(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                              "train.py", *FAST, *common, "train.batch_size=2",
                              f"hydra.run.dir={tmp_path / 'ddp'}"])
    assert double.returncode == 0, double.stdout + double.stderr
    a, b = load(latest_checkpoint(tmp_path / "single")), load(latest_checkpoint(tmp_path / "ddp"))
    # Gradients: Adam's first moment after one step is (1 - beta1) * grad, so it compares the averaged gradients.
    moments_a = [s["exp_avg"] for s in a["opt_g"]["state"].values()] + [s["exp_avg"] for s in a["opt_d"]["state"].values()]
    moments_b = [s["exp_avg"] for s in b["opt_g"]["state"].values()] + [s["exp_avg"] for s in b["opt_d"]["state"].values()]
    assert sum(float(m.abs().sum()) for m in moments_a) > 0, "no step was taken"
    for ma, mb in zip(moments_a, moments_b, strict=True):
        torch.testing.assert_close(mb, ma, rtol=1e-3, atol=1e-7)  # float summation order differs
    # Weights: Adam's first update is lr * g / (|g| + eps), so where |g| is within float noise of 0 its sign is
    # noise; everywhere else the two runs must agree to float precision.
    compared = total = 0
    for part, optimizer in (("generator", "opt_g"), ("discriminator", "opt_d")):
        keys, states = list(a[part]), list(a[optimizer]["state"].values())
        assert len(keys) == len(states), f"{part} has buffers: the key/state pairing below assumes none"
        for key, state in zip(keys, states):
            reliable = state["exp_avg"].abs() > 1e-6
            torch.testing.assert_close(b[part][key][reliable], a[part][key][reliable], rtol=0, atol=1e-6,
                                       msg=f"{part}.{key}")
            compared, total = compared + int(reliable.sum()), total + reliable.numel()
    assert compared > 0.95 * total, f"only {compared} of {total} weights had gradients large enough to compare"


def test_demo_learns_and_writes_wandb_offline_run(tmp_path: Path) -> None:
    overrides = ["data.image_size=64", "train.batch_size=8", "train.max_steps=120", "train.eval_every=120",
                 "train.eval_images=16", "train.log_every=20", "train.image_every=60", "logger.mode=offline"]
    assert train_in_process(overrides, tmp_path) == 0
    history = [json.loads(line) for line in (tmp_path / "eval_history.jsonl").read_text().splitlines()]
    assert history[0]["step"] == 0 and history[-1]["step"] == 120
    assert history[-1]["val/psnr"] > history[0]["val/psnr"] + 2.0, history
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb")), "no W&B offline run written"
    assert (tmp_path / "images" / "step_00000060.png").is_file()


def test_fine_tuning_starts_from_a_released_checkpoints_ema_weights(tmp_path: Path) -> None:
    from openmagvit2.losses import build_discriminator
    from openmagvit2.models import Tokenizer

    cfg = compose_config(FAST)
    torch.manual_seed(123)
    raw, ema = Tokenizer.from_config(cfg.model, cfg.quantizer), Tokenizer.from_config(cfg.model, cfg.quantizer)
    disc = build_discriminator(cfg.loss)
    state = {**raw.state_dict(), **{f"loss.discriminator.{k}": v for k, v in disc.state_dict().items()},
             "model_ema.decay": torch.tensor(0.999), "model_ema.num_updates": torch.tensor(-1)}
    state.update({"model_ema." + k.replace(".", ""): v for k, v in ema.state_dict().items()})
    released = tmp_path / "released.ckpt"
    torch.save({"state_dict": state, "global_step": 5}, released)

    # A vanishing learning rate: after one step the weights are still the ones loaded (Adam moves them <= 1e-12).
    run_dir = tmp_path / "run"
    assert train_in_process([f"train.init_from={released}", "optim.lr=1e-12", "train.max_steps=1",
                             "train.ema_decay=null", "loss.disc_start=0"], run_dir) == 0
    assert f"initialised generator (ema weights) and discriminator from {released}" in (run_dir / "train.log").read_text()
    result = load(latest_checkpoint(run_dir))
    for key, value in ema.state_dict().items():
        torch.testing.assert_close(result["generator"][key], value, rtol=0, atol=1e-9, msg=key)
    assert not torch.equal(result["generator"]["decoder.conv_out.weight"], raw.state_dict()["decoder.conv_out.weight"])
    for key, value in disc.named_parameters():
        torch.testing.assert_close(result["discriminator"][key], value.detach(), rtol=0, atol=1e-9, msg=key)


def logged_value(run_dir: Path, step: int, name: str) -> float:
    """A scalar as logged (metrics.jsonl holds every scalar of every log step, at full precision)."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["step"] == step and name in record:
            return record[name]
    raise AssertionError(f"{name} at step {step} not in {run_dir / 'metrics.jsonl'}")


def test_compiled_generator_trains_like_the_eager_one(tmp_path: Path) -> None:
    common = ["train.max_steps=2", "train.ema_decay=null"]
    assert train_in_process(common, tmp_path / "eager") == 0
    assert train_in_process(common + ["train.compile=true"], tmp_path / "compiled") == 0
    for step in (1, 2):
        eager, compiled = (logged_value(tmp_path / run, step, "loss/g_total") for run in ("eager", "compiled"))
        assert compiled == pytest.approx(eager, rel=1e-3, abs=1e-4), step


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    # A learning rate of 1e6 blows the weights up within a few steps.
    exit_code = train_in_process(["optim.lr=1e6", "train.max_steps=200", "train.ckpt_every=1",
                                  "train.keep_last=0", "loss.disc_start=0"], tmp_path)
    log = (tmp_path / "train.log").read_text()
    assert exit_code == 1, log
    assert "non-finite loss at step" in log and "stopping before any update" in log
    failed_at = int(log.split("non-finite loss at step ")[1].split()[0])
    saved = [load(path)["step"] for path in list_checkpoints(tmp_path)]
    assert saved and max(saved) == failed_at, (saved, failed_at)  # nothing written after the bad step
    assert not (tmp_path / "COMPLETED").exists()
    for path in list_checkpoints(tmp_path):
        assert all(torch.isfinite(v).all() for v in load(path)["generator"].values())


def test_resumed_run_continues_the_same_wandb_run(tmp_path: Path) -> None:
    overrides = ["logger.mode=offline", "train.ckpt_every=1"]
    assert train_in_process(overrides + ["train.max_steps=1"], tmp_path) == 0
    run_id = (tmp_path / "wandb_run_id.txt").read_text().strip()
    assert train_in_process(overrides + ["train.max_steps=2"], tmp_path) == 0
    assert (tmp_path / "wandb_run_id.txt").read_text().strip() == run_id
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # W&B names offline runs offline-run-<time>-<id>, adding -1 when two start within the same second.
    assert len(runs) == 2 and all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", path.name)
                                  for path in runs), runs


def test_an_exception_mid_run_still_finishes_wandb_and_closes_the_log(tmp_path: Path, monkeypatch) -> None:
    import wandb

    import openmagvit2.train.tasks as tasks_module

    calls = {"n": 0}
    real_apply = tasks_module.apply_updates

    def failing_apply(gan, losses):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated CUDA error")
        return real_apply(gan, losses)

    monkeypatch.setattr(tasks_module, "apply_updates", failing_apply)
    with pytest.raises(RuntimeError, match="simulated CUDA error"):
        train_in_process(["logger.mode=offline", "train.max_steps=5"], tmp_path)
    assert wandb.run is None  # finished in the finally block, not left running
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
