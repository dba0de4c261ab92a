"""torchrun, made safe for pre-emption: the same agent and arguments, with the signals and exit code a scheduler needs.

    python -m openmagvit2.launch.torchrun --standalone --nproc-per-node=8 train.py experiment=in256_large \
        hydra.run.dir=runs/in256_large/my_run          # run the same command again to resume

Plain torchrun (`torch.distributed.run`) has three habits that break a resumable run:
- SIGUSR1/SIGUSR2 (what SLURM and submitit send before a time limit) kill the agent and leave the workers running
  without a parent; SIGTERM/SIGINT make it terminate the workers and exit 1.
- When the workers checkpoint and exit 75 (`REQUEUE_EXIT_CODE`), torchrun exits 1, so a wrapper cannot tell
  "pre-empted, checkpoint saved" from a crash.
This module runs torch's own launcher in this process (every torchrun option works) and changes only that:
SIGUSR1, SIGUSR2, SIGTERM and SIGINT are forwarded to the workers, which checkpoint at the next step boundary and
exit 75, and this process then exits 75 too. SIGHUP and SIGQUIT keep torchrun's meaning (terminate the workers).
If the agent itself is killed, the workers stop on their own (`openmagvit2.train.signals.stop_when_parent_dies`).
"""
from __future__ import annotations

import os
import signal
import sys
from types import FrameType

from openmagvit2.train.signals import REQUEUE_EXIT_CODE

FORWARDED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)
# What the agent still handles itself (terminate the workers, exit); it must not also claim the forwarded ones.
AGENT_SIGNALS = "SIGHUP,SIGQUIT"


def worker_pids(parent: int | None = None) -> list[int]:
    """The direct children of `parent` (default: this process), i.e. the workers the in-process agent started.

    Read from /proc: the agent keeps its process handles private, and each worker runs in a session of its own
    (so a terminal's Ctrl-C reaches only the agent, which is why it must forward it).
    """
    parent = os.getpid() if parent is None else parent
    children = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == parent:
            children.append(int(entry.name))
    return children


def _forward(signum: int, frame: FrameType | None) -> None:
    pids = worker_pids()
    name = signal.Signals(signum).name
    print(f"[openmagvit2.launch.torchrun] {name}: forwarding it to the workers {pids} (checkpoint at the next step "
          f"boundary, then exit {REQUEUE_EXIT_CODE})", file=sys.stderr, flush=True)
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def exit_code(failures: dict) -> int:
    """The launcher's exit code from the agent's failures (`ChildFailedError.failures`: rank -> ProcessFailure).

    75 when a worker exited 75 and every other failure is 75 too or the SIGTERM with which the agent stops the
    remaining workers once one has exited; otherwise the first failure's code (128 + n for a death by signal n).
    """
    codes = [failure.exitcode for failure in failures.values()]
    if REQUEUE_EXIT_CODE in codes and all(code in (REQUEUE_EXIT_CODE, -signal.SIGTERM) for code in codes):
        return REQUEUE_EXIT_CODE
    first = min(failures.values(), key=lambda failure: failure.timestamp).exitcode
    return first if first > 0 else 128 - first if first < 0 else 1


def main(argv: list[str] | None = None) -> int:
    """Parse torchrun's arguments, run its agent here with the forwarding handlers, and return the exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    forwarded = {s.name for s in FORWARDED_SIGNALS}
    kept = [name.strip() for name in args.signals_to_handle.split(",") if name.strip() not in forwarded]
    args.signals_to_handle = ",".join(kept) or AGENT_SIGNALS
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, _forward)
    try:
        run(args)
    except ChildFailedError as error:
        code = exit_code(error.failures)
        if code == REQUEUE_EXIT_CODE:
            print(f"[openmagvit2.launch.torchrun] the workers saved a checkpoint and exited {REQUEUE_EXIT_CODE}: run "
                  "the same command (same hydra.run.dir) to resume", file=sys.stderr, flush=True)
        else:
            print(f"[openmagvit2.launch.torchrun] {error}", file=sys.stderr, flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
