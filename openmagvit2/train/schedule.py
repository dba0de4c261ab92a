"""Learning-rate schedules as multipliers of the base lr: constant, cosine, or step drops, with linear warm-up."""
from __future__ import annotations

import math
from typing import Callable, Sequence


def lr_multiplier(schedule: str, max_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
                  drop_steps: Sequence[int] = (), drop_rate: float = 0.1) -> Callable[[int], float]:
    """Return step -> multiplier. `step` counts completed optimiser steps (0 before the first update)."""
    drops = sorted(int(s) for s in drop_steps)

    def multiplier(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        if schedule == "step":
            return drop_rate ** sum(step >= s for s in drops)
        if schedule == "cosine":
            progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
            return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"optim.schedule={schedule!r} is not one of constant, cosine, step.")

    return multiplier
