"""The terminal, train.log and metrics.jsonl as a user reads them (issue 12, item 7), driving `Tracker` directly."""
from __future__ import annotations

import io
import json
import logging

from rich.console import Console

from openmagvit2.train.tracking import TERMINAL_KEYS, Tracker, format_value

# One log step as train.py sends it: 21 scalars, constants and counts included.
STEP_LOGS = {"loss/g_total": 0.51234, "loss/l1": 0.081234, "loss/perceptual": 0.3, "loss/nll": 0.4,
             "loss/gen": 0.7, "loss/entropy": -0.01, "loss/commitment": 0.002, "loss/d_total": 1.98765,
             "loss/hinge": 1.9, "loss/lecam": 0.0, "loss/gen_weight": 0.1, "grad_norm/g": 3.2, "grad_norm/d": 1.1,
             "lr": 1e-4, "img_per_s": 118.37, "steps_per_s": 14.8, "data/skipped": 0.0, "data/images": 11460.0,
             "usage": 0.42, "entropy/per_sample": 0.3, "entropy/codebook": 12.0}


def tracker(tmp_path, console=None, max_steps=100):
    return Tracker(tmp_path, enabled=True, max_steps=max_steps, console=console)


def test_plain_terminal_shows_a_short_stable_set_and_keeps_the_last_eval(tmp_path, capsys):
    track = tracker(tmp_path, Console(file=io.StringIO(), force_terminal=False))
    track.log_scalars(0, {"val/psnr": 20.123, "val/usage": 0.25})
    track.log_scalars(10, STEP_LOGS)
    track.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert lines[-1].startswith("step 10/100 g_total=0.5123 l1=0.08123 d_total=1.988 val_psnr=20.12 "
                                "val_usage=0.25 img/s=118 eta=")
    assert len(lines[-1]) < 130 and "lr=" not in lines[-1] and "e+" not in lines[-1]
    log_lines = (tmp_path / "train.log").read_text().splitlines()
    assert log_lines[-1].startswith("step 10/100 g_total=0.5123")  # train.log: the same short line


def test_every_scalar_goes_to_metrics_jsonl_one_object_per_log_step(tmp_path):
    track = tracker(tmp_path, Console(file=io.StringIO(), force_terminal=False))
    track.log_scalars(10, STEP_LOGS)
    track.log_scalars(20, {**STEP_LOGS, "loss/g_total": 0.4})
    track.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [10, 20]
    assert records[0] == {"step": 10, **STEP_LOGS} and records[1]["loss/g_total"] == 0.4


def test_counts_are_integers_and_small_values_keep_four_digits():
    assert format_value(11460.0) == "11460" and format_value(118.37) == "118" and format_value(0.081234) == "0.08123"
    assert format_value(3) == "3" and format_value(float("nan")) == "nan"


def test_tty_bar_status_keeps_losses_through_an_eval_and_library_logs_print_above_it(tmp_path):
    screen = io.StringIO()
    root = logging.getLogger()
    hydra_like = logging.StreamHandler(__import__("sys").stdout)  # what Hydra's job_logging installs
    root.addHandler(hydra_like)
    try:
        track = tracker(tmp_path, Console(file=screen, force_terminal=True, width=200))
        assert hydra_like not in root.handlers  # swapped for the console while the bar runs
        track.log_scalars(10, STEP_LOGS)
        track.log_scalars(10, {"val/psnr": 21.5, "val/usage": 0.5})  # an eval log
        status = track._progress.tasks[0].fields["status"]
        assert status == "g_total=0.5123 l1=0.08123 d_total=1.988 val_psnr=21.5 val_usage=0.5 img/s=118"
        logging.getLogger("openmagvit2.data").warning("skipped a corrupt image")
        track.close()
        assert hydra_like in root.handlers  # restored
    finally:
        root.removeHandler(hydra_like)
    assert "skipped a corrupt image" in screen.getvalue()
    assert set(TERMINAL_KEYS) == {"loss/g_total", "loss/l1", "loss/d_total", "val/psnr", "val/usage", "img_per_s",
                                  "loss/ar", "acc/sub0", "acc/sub1", "val/loss/ar", "tokens_per_s",  # + Stage II
                                  "clips_per_s"}  # + video
