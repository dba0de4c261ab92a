"""Exponential moving average of the generator's weights, used for evaluation as in the published recipe."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """Shadow copy updated after every optimiser step with decay min(decay, (1 + n) / (10 + n)).

    The warm-up keeps the early shadow close to the live weights, so evaluations during the first few thousand
    steps are meaningful. Buffers (none in the tokenizer today) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        shadow = [p for p in self.module.parameters()]
        live = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(shadow, live, 1.0 - decay)  # private but stable: one fused kernel for all tensors
        for shadow_buffer, buffer in zip(self.module.buffers(), model.buffers()):
            shadow_buffer.copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """The warm-up counter; the shadow weights are `self.module`, checkpointed as a model of their own
        (`generator_ema`, the key `Tokenizer.from_checkpoint` reads)."""
        return {"num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.num_updates = int(state["num_updates"])
