"""What rank 0 tells the world: W&B (online/offline/disabled) and `metrics.jsonl` get every scalar; the terminal (a
rich bar on a TTY, plain lines in SLURM logs) and `train.log` get a short, stable set. Other ranks get a tracker that
does nothing."""
from __future__ import annotations

import json
import logging
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


# The terminal's short, stable set (label on screen): the losses that matter, the last evaluation, throughput.
# Everything else (and these) goes to W&B and <run dir>/metrics.jsonl.
# The terminal's short set (those a run logs): Stage I's losses and val metrics, then Stage II's, then throughput.
TERMINAL_KEYS: dict[str, str] = {"loss/g_total": "g_total", "loss/l1": "l1", "loss/d_total": "d_total",
                                 "val/psnr": "val_psnr", "val/usage": "val_usage",
                                 "loss/ar": "ar_loss", "acc/sub0": "acc0", "acc/sub1": "acc1",
                                 "val/loss/ar": "val_nll", "img_per_s": "img/s", "clips_per_s": "clips/s",
                                 "tokens_per_s": "tok/s"}
METRICS_FILE = "metrics.jsonl"


def format_value(value: float) -> str:
    """For humans: whole numbers (counts) as integers, large values without decimals, others to 4 significant."""
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if value.is_integer() or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.4g}"


def format_metrics(metrics: dict[str, float]) -> str:
    """The terminal's short set, in its fixed order: `g_total=0.512 l1=0.0812 ... img/s=118`."""
    return " ".join(f"{label}={format_value(metrics[key])}" for key, label in TERMINAL_KEYS.items() if key in metrics)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ConsoleHandler(logging.Handler):
    """Library log records printed through rich's console, so that they appear above the progress bar."""

    def __init__(self, console: Console, formatter: logging.Formatter | None) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(formatter or logging.Formatter("[%(name)s][%(levelname)s] - %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001  (logging must never raise into the caller)
            self.handleError(record)


def _is_terminal_handler(handler: logging.Handler) -> bool:
    return type(handler) is logging.StreamHandler and getattr(handler, "stream", None) in (
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


class Tracker:
    """Rank 0's sink for scalars, images and messages; a silent no-op on other ranks.

    Terminal: the short set of `TERMINAL_KEYS`, values kept between calls (an evaluation updates val_psnr and
    keeps the losses), img/s and the ETA; on a TTY in a rich bar, with library log lines routed above it.
    `train.log`: the same short line per log step, plus every `info` line. `metrics.jsonl`: every scalar of every
    log call, one JSON object per line. W&B: every scalar.
    """

    def __init__(self, run_dir: Path, enabled: bool, logger_cfg: Any = None, config: dict | None = None,
                 max_steps: int = 0, start_step: int = 0, run_id: str | None = None,
                 console: Console | None = None) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.max_steps = max_steps
        self.wandb_run = None
        self.run_id = run_id
        self.shown: dict[str, float] = {}  # the terminal set's latest values
        self._progress: Progress | None = None
        self._task = None
        self._swapped_handlers: list[logging.Handler] = []
        self._console_handler: ConsoleHandler | None = None
        self._start_step, self._start_time = start_step, time.monotonic()
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(run_dir / "train.log", "a", buffering=1)
        self._metrics_file = open(run_dir / METRICS_FILE, "a", buffering=1)
        self.console = console or Console(file=sys.stdout)
        self.is_tty = self.console.is_terminal
        if logger_cfg is not None:
            self._start_wandb(logger_cfg, config or {})
        if self.is_tty and max_steps:
            self._progress = Progress(TextColumn("[bold]train"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                      TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                                      console=self.console, transient=False)
            self._task = self._progress.add_task("train", total=max_steps, completed=start_step, status="")
            self._route_library_logs()
            self._progress.start()

    def _route_library_logs(self) -> None:
        """Swap the root logger's terminal handlers (Hydra's) for one printing through the bar's console."""
        root = logging.getLogger()
        self._swapped_handlers = [handler for handler in root.handlers if _is_terminal_handler(handler)]
        formatter = self._swapped_handlers[0].formatter if self._swapped_handlers else None
        for handler in self._swapped_handlers:
            root.removeHandler(handler)
        self._console_handler = ConsoleHandler(self.console, formatter)
        root.addHandler(self._console_handler)

    def _restore_library_logs(self) -> None:
        root = logging.getLogger()
        if self._console_handler is not None:
            root.removeHandler(self._console_handler)
            self._console_handler = None
        for handler in self._swapped_handlers:
            root.addHandler(handler)
        self._swapped_handlers = []

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
        name = logger_cfg.name or self.run_dir.name
        self.wandb_run = wandb.init(
            project=logger_cfg.project, entity=logger_cfg.entity, group=logger_cfg.group,
            name=name, tags=list(logger_cfg.tags or []), config=config,
            dir=str(self.run_dir), id=run_id, resume="allow", mode=mode,
            settings=wandb.Settings(quiet=True, console="off"),
        )
        group = f", group {logger_cfg.group}" if logger_cfg.group else ""
        self.info(f"W&B run {run_id} named {name}{group} ({mode}) in {self.run_dir / 'wandb'}")

    def info(self, message: str) -> None:
        """A line for humans: terminal (above the progress bar) and train.log."""
        if not self.enabled:
            return
        stamped = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}"
        self._log_file.write(stamped + "\n")
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            print(stamped, flush=True)

    def eta_s(self, step: int) -> float | None:
        """Seconds left at the mean pace since this process started (None before the first step)."""
        done = step - self._start_step
        if done <= 0 or not self.max_steps:
            return None
        return (time.monotonic() - self._start_time) / done * (self.max_steps - step)

    def log_scalars(self, step: int, metrics: dict[str, float]) -> None:
        """Every scalar to W&B and metrics.jsonl; the short set to the terminal and train.log."""
        if not self.enabled:
            return
        values = {key: float(value) for key, value in metrics.items()}
        self._metrics_file.write(json.dumps({"step": step, **values}) + "\n")
        self.shown.update({key: values[key] for key in TERMINAL_KEYS if key in values})
        eta = self.eta_s(step)
        line = f"step {step}/{self.max_steps} {format_metrics(self.shown)}"
        if eta is not None and step < self.max_steps:
            line += f" eta={format_duration(eta)}"
        self._log_file.write(line + "\n")
        if self._progress is not None:
            self._progress.update(self._task, completed=step, status=format_metrics(self.shown))
        else:
            print(line, flush=True)
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

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
            self._restore_library_logs()
        if self.wandb_run is not None:
            self.wandb_run.finish()
        self._log_file.close()
        self._metrics_file.close()


def write_json(path: Path, values: dict[str, Any]) -> None:
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
