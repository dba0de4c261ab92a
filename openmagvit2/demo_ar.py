"""`make demo-ar`: Stage II on a CPU in a few minutes, end to end with the real entry points.

    python -m openmagvit2.demo_ar [run_dir=runs/demo-ar-<time>] [tokenizer=<checkpoint>] [any train.py override ...]

1. the demo tokenizer: `tokenizer=` if given, else the newest `runs/demo-*/checkpoints/step_*.pt` of `make demo`,
   else trained here (`train.py experiment=demo`);
2. `python -m openmagvit2.tokenize` on the bundled photos (train crops and held-out val crops; a crop's class is the
   photo it comes from);
3. `train.py experiment=ar_demo` (the tiny AR model, `task=generator`) on those tokens;
4. prints the validation token NLL at step 0 next to the end, and where the grid of samples is.
Exits non-zero when the NLL did not fall clearly.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from openmagvit2.demo import run_entry
from openmagvit2.paths import entry_script

MIN_NLL_DROP = 0.10  # the final validation NLL must be at least 10% below the untrained model's


def demo_tokenizer(run_dir: Path, given: str | None) -> Path:
    """The tokenizer to generate with: given, the newest `make demo` result, or a fresh `experiment=demo` run."""
    if given:
        return Path(given).resolve()
    finished = sorted(Path("runs").glob("demo-*/checkpoints/step_*.pt"), key=lambda path: path.stat().st_mtime)
    if finished:
        return finished[-1].resolve()
    run_entry([str(entry_script("train")), "experiment=demo", f"hydra.run.dir={run_dir / 'tokenizer'}"])
    return sorted((run_dir / "tokenizer" / "checkpoints").glob("step_*.pt"))[-1]


def main(argv: list[str]) -> int:
    run_dir = Path(f"runs/demo-ar-{time.strftime('%Y%m%d-%H%M%S')}")
    tokenizer, overrides = None, []
    for arg in argv:
        if arg.startswith("run_dir="):
            run_dir = Path(arg.split("=", 1)[1])
        elif arg.startswith("tokenizer="):
            tokenizer = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    run_dir = run_dir.resolve()
    checkpoint = demo_tokenizer(run_dir, tokenizer)
    tokens = run_dir / "tokens"
    for split in ("train", "val"):
        run_entry(["-m", "openmagvit2.tokenize", f"ckpt={checkpoint}", "data=sample", f"split={split}",
              f"out={tokens}", f"hydra.run.dir={run_dir / 'tokenize' / split}"])
    run_entry([str(entry_script("train")), "experiment=ar_demo", f"data.root={tokens}", f"task.tokenizer={checkpoint}",
          f"hydra.run.dir={run_dir / 'ar'}", *overrides])

    history = [json.loads(line) for line in (run_dir / "ar" / "eval_history.jsonl").read_text().splitlines()]
    first, last = history[0], history[-1]
    table = Table(title=f"demo-ar: tiny AR model on the demo tokenizer's tokens ({run_dir})")
    table.add_column("validation (held-out crops)")
    table.add_column(f"step {first['step']}", justify="right")
    table.add_column(f"step {last['step']}", justify="right")
    table.add_row("token NLL (nats, both sub-tokens)", f"{first['val/loss/ar']:.3f}", f"{last['val/loss/ar']:.3f}")
    for name in sorted(key for key in last if key.startswith("val/acc/")):
        table.add_row(f"{name[4:]} (teacher-forced)", f"{first[name]:.2%}", f"{last[name]:.2%}")
    console = Console()
    console.print(table)
    grids = sorted((run_dir / "ar" / "images").glob("step_*.png"))
    console.print(f"tokenizer: {checkpoint}\ntokens: {tokens}\nAR checkpoints: {run_dir / 'ar' / 'checkpoints'}\n"
                  f"samples: {grids[-1] if grids else '(none)'}")
    drop = 1.0 - last["val/loss/ar"] / first["val/loss/ar"]
    if drop < MIN_NLL_DROP:
        console.print(f"[red]the validation NLL fell by only {drop:.1%}; the demo expects at least "
                      f"{MIN_NLL_DROP:.0%}.")
        return 1
    console.print(f"[green]the validation NLL fell by {drop:.1%} over {last['step']} steps.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
