"""Stage II through the one loop (train.py task=generator): tokens from a tokenizer, training, exact resume."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import FAST, compose_config, run_entry_point
from openmagvit2.config import ConfigError, model_preset
from openmagvit2.models import Tokenizer
from openmagvit2.train.checkpoint import latest_checkpoint, load

pytestmark = pytest.mark.slow
SAMPLE = ["data.epoch_crops=96", "data.val_crops=16"]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> tuple[Path, Path]:
    """A random tiny tokenizer (16x16 tokens of 64 px crops) and the tokens of the bundled photos, both splits."""
    root = tmp_path_factory.mktemp("ar")
    torch.manual_seed(0)
    tokenizer = Tokenizer(**model_preset("tiny"))
    tokenizer.save_pretrained(root / "tokenizer")
    for split in ("train", "val"):
        result = run_entry_point(["-m", "openmagvit2.tokenize", f"ckpt={root / 'tokenizer'}", "data=sample",
                                  "data.image_size=64", *SAMPLE, f"split={split}", f"out={root / 'tokens'}",
                                  "device=cpu", f"hydra.run.dir={root / 'tokenize' / split}"])
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return root / "tokenizer", root / "tokens"


def train_ar(run_dir: Path, tokens: tuple[Path, Path], overrides: list[str]) -> int:
    from train import train

    tokenizer, token_dir = tokens
    cfg = compose_config(["experiment=ar_demo", "debug=fast", f"data.root={token_dir}", f"task.tokenizer={tokenizer}",
                          "train.batch_size=4", "train.eval_images=8", "train.image_every=0", *overrides])
    return train(cfg, run_dir)


def test_resume_is_exact(tmp_path: Path, tokens) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_ar(straight, tokens, ["train.max_steps=4", "train.ckpt_every=4"]) == 0
    assert train_ar(split, tokens, ["train.max_steps=2", "train.ckpt_every=2"]) == 0
    assert train_ar(split, tokens, ["train.max_steps=4", "train.ckpt_every=2"]) == 0
    a, b = load(latest_checkpoint(straight)), load(latest_checkpoint(split))
    assert a["step"] == b["step"] == 4 and a["data"] == b["data"]
    for key, value in a["ar_model"].items():
        assert torch.equal(value, b["ar_model"][key]), key
    for index, state in a["opt_ar"]["state"].items():
        assert torch.equal(state["exp_avg"], b["opt_ar"]["state"][index]["exp_avg"]), index


def test_learns_logs_and_loads_back(tmp_path: Path, tokens) -> None:
    from openmagvit2 import ARModel

    assert train_ar(tmp_path, tokens, ["train.max_steps=30", "train.eval_every=30", "train.image_every=30",
                                       "train.ckpt_every=30"]) == 0
    import json

    history = [json.loads(line) for line in (tmp_path / "eval_history.jsonl").read_text().splitlines()]
    assert history[0]["step"] == 0 and history[-1]["val/loss/ar"] < 0.95 * history[0]["val/loss/ar"], history
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/sub0", "loss/sub1", "acc/sub0", "acc/sub1", "tokens_per_s", "grad_norm/ar"} <= set(logged[-2])
    assert (tmp_path / "images" / "step_00000030.png").is_file()  # samples decoded by the frozen tokenizer
    model = ARModel.from_checkpoint(latest_checkpoint(tmp_path))
    assert torch.equal(model.state_dict()["head.0.weight"], load(latest_checkpoint(tmp_path))["ar_model"]["head.0.weight"])


def test_tokens_of_another_grid_are_refused_before_anything_is_built(tmp_path: Path, tokens) -> None:
    with pytest.raises(ConfigError, match="are 16x16 per image but ar_model.grid_size=8"):
        train_ar(tmp_path, tokens, ["ar_model.grid_size=8", "train.max_steps=1"])


def test_cli_trains_on_images_encoded_in_the_loop(tmp_path: Path, tokens) -> None:
    tokenizer, _ = tokens
    result = run_entry_point(["train.py", *FAST, "task=generator", "ar_model=ar_tiny", "optim=ar_adamw",
                              "train.ema_decay=null", "data.image_size=64", *SAMPLE,
                              f"task.tokenizer={tokenizer}", "train.batch_size=4", "train.max_steps=2",
                              "train.eval_images=8", "train.image_every=0", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert load(latest_checkpoint(tmp_path))["step"] == 2
