"""What rank 0 tells the world: W&B (online/offline/disabled), the terminal (rich on a TTY, plain lines in SLURM
logs), and `train.log` in the run directory. Other ranks get a tracker that does nothing."""
from __future__ import annotations

import json
import netrc
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

RUN_ID_FILE = "wandb_run_id.txt"


def wandb_has_api_key() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` writes it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """`auto` becomes `online` with an API key and `offline` without (sync later with `wandb sync <run dir>/wandb`)."""
    if mode == "auto":
        return "online" if wandb_has_api_key() else "offline"
    return mode


def format_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


class Tracker:
    """Rank 0's sink for scalars, images and messages; a silent no-op on other ranks."""

    def __init__(self, run_dir: Path, enabled: bool, logger_cfg: Any = None, config: dict | None = None,
                 max_steps: int = 0, start_step: int = 0, run_id: str | None = None) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.max_steps = max_steps
        self.wandb_run = None
        self.run_id = run_id
        self._progress: Progress | None = None
        self._task = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(run_dir / "train.log", "a", buffering=1)
        self.console = Console(file=sys.stdout)
        self.is_tty = sys.stdout.isatty()
        if logger_cfg is not None:
            self._start_wandb(logger_cfg, config or {})
        if self.is_tty and max_steps:
            self._progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                      TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                      console=self.console, transient=False)
            self._task = self._progress.add_task("train", total=max_steps, completed=start_step, status="")
            self._progress.start()

    def _start_wandb(self, logger_cfg: Any, config: dict) -> None:
        mode = resolve_wandb_mode(str(logger_cfg.mode))
        if mode == "disabled":
            return
        import wandb  # imported lazily: it is slow to import and not needed with logger.mode=disabled

        # The run dir's id file first, then the id stored in the checkpoint being resumed, else a new run.
        id_file = self.run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else (self.run_id or uuid.uuid4().hex[:8])
        id_file.write_text(run_id)
        self.run_id = run_id
        self.wandb_run = wandb.init(
            project=logger_cfg.project, entity=logger_cfg.entity, group=logger_cfg.group,
            name=logger_cfg.name or self.run_dir.name, tags=list(logger_cfg.tags or []), config=config,
            dir=str(self.run_dir), id=run_id, resume="allow", mode=mode,
            settings=wandb.Settings(quiet=True, console="off"),
        )
        self.info(f"W&B run {run_id} ({mode}) in {self.run_dir / 'wandb'}")

    def info(self, message: str) -> None:
        """A line for humans: terminal (above the progress bar) and train.log."""
        if not self.enabled:
            return
        stamped = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        self._log_file.write(stamped + "\n")
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            print(stamped, flush=True)

    def log_scalars(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        line = f"step {step}/{self.max_steps} {format_metrics(metrics)}"
        self._log_file.write(line + "\n")
        if self._progress is not None:
            short = " ".join(f"{k.split('/')[-1]}={metrics[k]:.3g}" for k in ("loss/g_total", "psnr", "img_per_s")
                             if k in metrics)
            self._progress.update(self._task, completed=step, status=short)
        else:
            print(line, flush=True)
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def log_image(self, step: int, key: str, path: Path) -> None:
        if self.enabled and self.wandb_run is not None:
            import wandb

            self.wandb_run.log({key: wandb.Image(str(path))}, step=step)

    def summary(self, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.wandb_run is not None:
            self.wandb_run.summary.update(values)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.stop()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        self._log_file.close()


def write_json(path: Path, values: dict[str, Any]) -> None:
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
