"""Pre-emption and interruption: stop at the next step boundary with a checkpoint, never mid-step.

SLURM sends SIGUSR1 (asked for with `--signal`) or SIGTERM before it kills a job; submitit sends SIGUSR2; a user
presses Ctrl-C (SIGINT). Each handler only sets a flag; the loop checks it at a step boundary, where all ranks agree
to stop, checkpoint and exit with `REQUEUE_EXIT_CODE`, so that a half-finished optimiser step is never saved. A
second Ctrl-C means "now": it raises KeyboardInterrupt as Python's default handler would.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from types import FrameType

# EX_TEMPFAIL from sysexits.h: "temporary failure, try again": a checkpoint was saved, requeue the job.
REQUEUE_EXIT_CODE = 75
CHECKPOINT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


class PreemptionFlag:
    """Remembers whether a checkpoint-and-stop signal arrived; installs and restores the handlers."""

    def __init__(self, signals: tuple[int, ...] = CHECKPOINT_SIGNALS) -> None:
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without the checkpoint
        if signum == signal.SIGINT:
            print("\nCtrl-C: saving a checkpoint at the end of this step (press Ctrl-C again to stop at once)",
                  flush=True)
        self.received = signum

    def __enter__(self) -> "PreemptionFlag":
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""


# prctl(2) option: the signal the kernel sends this process when its parent thread dies.
_PR_SET_PDEATHSIG = 1


def stop_when_parent_dies(signum: int = signal.SIGTERM) -> bool:
    """Under torchrun, ask the kernel to send `signum` when the launcher agent dies; True when it was armed.

    Without it, a SIGKILLed (or crashed) agent leaves its workers training with no parent, holding the GPUs and the
    rendezvous port. With it, each worker gets SIGTERM, checkpoints at the next step boundary (`PreemptionFlag`) and
    exits. Linux only (prctl PR_SET_PDEATHSIG); elsewhere, or outside torchrun, it does nothing and returns False.
    """
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
