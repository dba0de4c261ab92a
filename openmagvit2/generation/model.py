"""`ARModel`: the class-conditional autoregressive token generator of Open-MAGVIT2 (LlamaGen style), our own code.

A decoder-only transformer over the raster-ordered token grid, prefixed by one class token. Each 18-bit token is
split into sub-tokens (6 + 12 bits in the release); the input embedding is the sum of the sub-token embeddings. The
spatial transformer's output h_t at position t goes through a small intra transformer over `[h_t, pre_emb(pre_t)]`
whose two outputs predict pre_t and then post_t given pre_t, one head per sub-token. Module names equal the released
checkpoint keys (minus `transformer.`), so `load_state_dict(strict=True)` reads `AR_256_{B,L,XL}.ckpt`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from openmagvit2.generation.config import ARModelConfig, resolve_config
from openmagvit2.generation.kv_cache import KVCache
from openmagvit2.generation.layers import Block, LabelEmbedder, RMSNorm
from openmagvit2.generation.rope import rope_table_2d
from openmagvit2.generation.sampling import Generators, Knob
from openmagvit2.generation.tokens import split_indices


class ARModelOutput(NamedTuple):
    """`ARModel.forward` result: teacher-forced logits `b n 2^bits_i` per sub-token, and the training loss."""

    logits: tuple[torch.Tensor, ...]
    loss: torch.Tensor  # sum over sub-tokens of the token-mean cross-entropy (nats), as the reference trains
    subtoken_losses: tuple[torch.Tensor, ...]  # each sub-token's mean cross-entropy


class ARModel(nn.Module):
    """Class-conditional AR generator over `grid_size^2` tokens; keywords are the fields of `ARModelConfig`.

    Build it from keywords (`ARModel(dim=1024, num_heads=16, ...)`), a config (`ARModel.from_config("ar_b")`), or a
    file (`ARModel.from_checkpoint(path)`). Plain module: no ranks, no files, no state besides the weights.
    """

    def __init__(self, **config: Any) -> None:
        super().__init__()
        self.config = ARModelConfig.from_mapping(config)
        c = self.config
        sub_embeddings = [nn.Embedding(2 ** bits, c.dim) for bits in c.factorized_bits]
        self.pre_emb = sub_embeddings[0]
        if len(sub_embeddings) > 1:
            self.post_emb = sub_embeddings[1]
        self.class_emb = LabelEmbedder(c.num_classes, c.dim, c.class_dropout)
        self.token_drop = nn.Dropout(c.token_dropout)
        block_args = (c.dim, c.num_heads, c.ffn_hidden_dim, c.norm_eps, c.attn_dropout, c.resid_dropout,
                      c.ffn_dropout)
        self.spatial_blocks = nn.ModuleList(Block(*block_args) for _ in range(c.spatial_layers))
        self.factorized_blocks = nn.ModuleList(Block(*block_args) for _ in range(c.factorized_layers))
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.head = nn.ModuleList(nn.Linear(c.dim, 2 ** bits, bias=False) for bits in c.factorized_bits)
        # Complex `(1 + n) e/2` rotations: the class token (zeros), then the grid; not in the state dict.
        self.register_buffer("rope", rope_table_2d(c.grid_size, c.head_dim, c.rope_base), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference init: every Linear and Embedding N(0, init_std), RMSNorm weights 1, heads zero."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        for head in self.head:
            nn.init.zeros_(head.weight)

    @property
    def hparams(self) -> dict[str, Any]:
        """JSON-able keywords; `ARModel(**model.hparams)` rebuilds the architecture."""
        return self.config.to_dict()

    @property
    def sub_embeddings(self) -> list[nn.Embedding]:
        """One input embedding per sub-token (`pre_emb`, then `post_emb`)."""
        return [self.pre_emb, self.post_emb] if hasattr(self, "post_emb") else [self.pre_emb]

    @classmethod
    def from_config(cls, model: str | Mapping[str, Any] | ARModelConfig) -> ARModel:
        """From a `conf/ar_model` name (`ar_b`, `ar_l`, `ar_xl`, `ar_tiny`), a dict of keywords, or a config."""
        return cls(**resolve_config(model).to_dict())

    @classmethod
    def from_checkpoint(cls, path: str | Path, model: str | Mapping[str, Any] | None = None) -> ARModel:
        """Load a released `AR_256_{B,L,XL}.ckpt` (`state_dict` with `transformer.*`) or our checkpoint, in eval mode.

        `model` (a config name or a dict of keywords) supplies what the weights cannot tell, e.g. `num_heads` and
        `grid_size`; by default it comes from our file's metadata, or for released files from the `conf/ar_model`
        config whose sizes match the weights. The tokenizer embedded in a released file (`first_stage_model.*`)
        loads with `Tokenizer.from_checkpoint(path)`.
        """
        from openmagvit2.generation.loading import load_ar_model

        return load_ar_model(cls, path, model)

    def checkpoint(self) -> dict[str, Any]:
        """Our checkpoint dict (`torch.save` it): format tag, hyper-parameters, and the weights (CPU copies)."""
        from openmagvit2.generation.loading import checkpoint_dict

        return checkpoint_dict(self)

    # -- teacher-forced training / scoring -----------------------------------------------------------------------

    def forward(self, indices: torch.Tensor, labels: torch.Tensor) -> ARModelOutput:
        """indices `b n` int64 token ids in raster order (n <= grid_size^2), labels `b` int64 -> logits and loss.

        Labels may be `num_classes` (the null class); in training mode labels drop to it with `class_dropout`.
        """
        n = self.check_inputs(indices, labels)
        subtokens = split_indices(indices, self.config.factorized_bits)
        embedded = [emb(part) for emb, part in zip(self.sub_embeddings, subtokens)]
        tokens = torch.stack(embedded).sum(0)  # `b n d`
        sequence = torch.cat([self.class_emb(labels)[:, None], tokens[:, :-1]], dim=1)
        h = self.spatial(self.token_drop(sequence), 0)
        # Intra transformer: position t's context [h_t, e_0(s_0,t), ..] predicts s_0,t, s_1,t, .. in turn.
        context = torch.stack([h, *embedded[:-1]], dim=2)
        out = self.intra(rearrange(context, "b n k d -> (b n) k d"), 0)
        out = rearrange(self.norm(out), "(b n) k d -> b n k d", n=n)
        logits = tuple(head(out[:, :, i]) for i, head in enumerate(self.head))
        losses = tuple(F.cross_entropy(rearrange(lg, "b n v -> (b n) v").float(), part.reshape(-1))
                       for lg, part in zip(logits, subtokens))
        return ARModelOutput(logits, torch.stack(losses).sum(), losses)

    def check_inputs(self, indices: torch.Tensor, labels: torch.Tensor) -> int:
        """Refuse wrongly shaped or typed inputs (no device sync); returns the sequence length."""
        if indices.ndim != 2 or labels.shape != indices.shape[:1]:
            raise ValueError(f"indices must be (b, n) and labels (b,), got {tuple(indices.shape)} and "
                             f"{tuple(labels.shape)}.")
        if indices.dtype != torch.long or labels.dtype != torch.long:
            raise TypeError(f"indices and labels must be int64, got {indices.dtype} and {labels.dtype}.")
        if not 1 <= indices.shape[1] <= self.config.num_tokens:
            raise ValueError(f"sequences of {indices.shape[1]} tokens do not fit grid_size={self.config.grid_size}: "
                             f"pass 1..{self.config.num_tokens} tokens per row (raster order).")
        return indices.shape[1]

    # -- the two stacks, with or without a KV cache ---------------------------------------------------------------

    def spatial(self, x: torch.Tensor, start: int, cache: KVCache | None = None) -> torch.Tensor:
        """Spatial blocks on `b s d` at sequence positions start..start+s-1 (0 is the class token) -> `b s d`."""
        rope = self.rope[start:start + x.shape[1]]
        for layer, block in enumerate(self.spatial_blocks):
            x = block(x, rope, cache, layer, start)
        return x

    def intra(self, x: torch.Tensor, start: int, cache: KVCache | None = None) -> torch.Tensor:
        """Intra blocks on `b s d` at sub-token positions start..start+s-1 (same RoPE rows as the spatial stack)."""
        rope = self.rope[start:start + x.shape[1]]
        for layer, block in enumerate(self.factorized_blocks):
            x = block(x, rope, cache, layer, start)
        return x

    # -- sampling -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, cfg_scale: Knob = 1.0, temperature: Knob = 1.0, top_k: Knob = 0,
                 top_p: Knob = 1.0, kv_cache: bool = True, generator: Generators = None) -> torch.Tensor:
        """Sample token grids for class labels `b` (int64) -> `b n` int64 18-bit ids in raster order.

        Each knob is a number or one value per sub-token. cfg_scale s guides with `u + s (c - u)` (conditional and
        unconditional rows in one batch; s = 1 runs no unconditional rows); temperature 0 or top_k 1 is greedy;
        top_k 0 and top_p 1 keep every token. `generator`: a torch.Generator on the model's device, one per label
        (each row then depends on its own generator only), or None for the global RNG. `kv_cache=False` recomputes
        the whole prefix at every step (for checking and benchmarking). Runs in eval mode; the mode is restored.
        """
        from openmagvit2.generation.decode import generate_tokens

        return generate_tokens(self, labels, cfg_scale, temperature, top_k, top_p, kv_cache, generator)


def count_parameters(model: nn.Module, names: Sequence[str] | None = None) -> int:
    """Number of parameters (all, or those whose name starts with one of `names`)."""
    return sum(p.numel() for name, p in model.named_parameters() if names is None or name.startswith(tuple(names)))
