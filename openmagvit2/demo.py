"""`make demo`: train the tiny tokenizer on the scikit-image photos, evaluate it, and show that it learned.

    python -m openmagvit2.demo [run_dir=runs/demo-<time>] [any train.py override ...]

Runs the real entry points one after the other (`train.py experiment=demo`, then `eval.py` on the final checkpoint
with the metrics that need no pretrained weights), then prints PSNR at step 0 next to PSNR after training, both on
the same held-out crops, and where everything was written. Exits non-zero if training did not improve PSNR.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from openmagvit2.paths import entry_script

MIN_GAIN_DB = 1.0


def run_entry(args: list[str]) -> None:
    """Run `python <args>` (an entry point of the project), echoing the command; exit with its code if it fails."""
    print("+ python " + " ".join(args), flush=True)
    completed = subprocess.run([sys.executable, *args])
    if completed.returncode != 0:
        sys.exit(completed.returncode)


def demo_arguments(argv: list[str], default_run_dir: str) -> tuple[Path, list[str]]:
    """(absolute run dir, the other arguments as train.py overrides) from `run_dir=... key=value ...`."""
    run_dir, overrides = Path(default_run_dir), []
    for arg in argv:
        if arg.startswith("run_dir="):
            run_dir = Path(arg.split("=", 1)[1])
        else:
            overrides.append(arg)
    return run_dir.resolve(), overrides  # relative to the directory the demo was started from


def report_psnr_gain(train_dir: Path, eval_dir: Path, title: str, psnr_label: str, where: dict[str, str]) -> int:
    """Print PSNR and usage at the first and last in-training evaluation, eval.py's final metrics and where the
    outputs are; 0 when PSNR rose by at least MIN_GAIN_DB, else 1."""
    history = [json.loads(line) for line in (train_dir / "eval_history.jsonl").read_text().splitlines()]
    first, last = history[0], history[-1]
    final = json.loads((eval_dir / "metrics.json").read_text())
    table = Table(title=title)
    table.add_column("")
    table.add_column(f"step {first['step']}", justify="right")
    table.add_column(f"step {last['step']}", justify="right")
    table.add_row(psnr_label, f"{first['val/psnr']:.2f}", f"{last['val/psnr']:.2f}")
    table.add_row("codebook usage", f"{first['val/usage']:.4%}", f"{last['val/usage']:.4%}")
    console = Console()
    console.print(table)
    console.print(f"eval.py on the final EMA weights: {json.dumps(final.get('metrics', final), sort_keys=True)}")
    console.print("\n".join(f"{name}: {path}" for name, path in where.items()))
    gain = last["val/psnr"] - first["val/psnr"]
    if gain < MIN_GAIN_DB:
        console.print(f"[red]PSNR improved by only {gain:.2f} dB; the demo expects at least {MIN_GAIN_DB} dB.")
        return 1
    console.print(f"[green]PSNR improved by {gain:.2f} dB over {last['step']} steps.")
    return 0


def main(argv: list[str]) -> int:
    run_dir, overrides = demo_arguments(argv, f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    run_entry([str(entry_script("train")), "experiment=demo", f"hydra.run.dir={run_dir}", *overrides])
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*.pt"))
    run_entry([str(entry_script("eval")), f"ckpt={checkpoints[-1]}", "data=sample", "metrics=[psnr,ssim,usage]",
               f"hydra.run.dir={run_dir / 'eval'}"])
    return report_psnr_gain(run_dir, run_dir / "eval", f"demo: tiny tokenizer, held-out crops ({run_dir})",
                            "PSNR (dB)", {"checkpoints": str(run_dir / "checkpoints"),
                                          "reconstructions": str(run_dir / "eval"),
                                          "training images": str(run_dir / "images"),
                                          "metrics": str(run_dir / "eval" / "metrics.json")})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
