"""Learning-rate schedules as multipliers of the base lr: constant, cosine, step drops (Stage I) or the Stage II
`linear` schedule, each with a linear warm-up."""
from __future__ import annotations

import math
from typing import Callable, Sequence

# The Stage II schedule holds the peak lr for this fraction of the steps after warm-up (REFERENCE-STAGE2 §7).
PLATEAU_FRACTION = 0.05


def lr_multiplier(schedule: str, max_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
                  drop_steps: Sequence[int] = (), drop_rate: float = 0.1,
                  warmup_start_ratio: float = 0.0) -> Callable[[int], float]:
    """Return step -> multiplier. `step` counts completed optimiser steps (0 before the first update).

    `linear` is Open-MAGVIT2's Stage II schedule, per iteration: warm-up from `warmup_start_ratio` to 1, the peak for
    the first 5% of the remaining steps, then a linear decay to `min_lr_ratio` at the last step.
    """
    drops = sorted(int(s) for s in drop_steps)

    def multiplier(step: int) -> float:
        if schedule == "linear":
            if step < warmup_steps:
                return warmup_start_ratio + (1.0 - warmup_start_ratio) * step / warmup_steps
            progress = (step - warmup_steps) / max(1, max_steps - 1 - warmup_steps)
            if progress < PLATEAU_FRACTION:
                return 1.0
            return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - progress) / (1.0 - PLATEAU_FRACTION)
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        if schedule == "step":
            return drop_rate ** sum(step >= s for s in drops)
        if schedule == "cosine":
            progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
            return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"optim.schedule={schedule!r} is not one of constant, cosine, step, linear.")

    return multiplier
