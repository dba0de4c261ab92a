"""Transformer blocks of the AR model (LLaMA style), with the released Open-MAGVIT2 module names.

`Block` = pre-norm attention + SwiGLU; `Attention` has one fused `wqkv` projection; no layer has a bias. The names
(`attention.wqkv`, `attention.wo`, `feed_forward.w1/w2/w3`, `attention_norm`, `ffn_norm`, `embedding_table`) are
the released state-dict keys.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openmagvit2.generation.kv_cache import KVCache
from openmagvit2.generation.rope import apply_rope


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) computed in fp32, cast back to x's dtype, then times a learned weight."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_fp32 = x.float()
        normed = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: dropout(w2(silu(w1 x) * w3 x))."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Attention(nn.Module):
    """Causal multi-head self-attention with 2D RoPE on q and k, optionally through a `KVCache`."""

    def __init__(self, dim: int, num_heads: int, attn_dropout: float, resid_dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_dropout = attn_dropout
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.resid_dropout = nn.Dropout(resid_dropout)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                start: int = 0) -> torch.Tensor:
        """x `b s d` at positions start..start+s-1 (rope: their complex `s e/2` rotations) -> `b s d`.

        Without a cache, attention is causal over x. With one, x's keys/values are written at `start` and x attends
        to every cached position up to its own; a multi-position write must then start at 0. (Views instead of
        einops: this is the decode loop's hot path.)
        """
        b, s, _ = x.shape
        q, k, v = self.wqkv(x).view(b, s, 3, self.num_heads, -1).unbind(2)  # `b s h e` each, q k v contiguous blocks
        q, k = apply_rope(q, rope).transpose(1, 2), apply_rope(k, rope).transpose(1, 2)  # `b h s e`
        v = v.transpose(1, 2)
        causal = s > 1
        if cache is not None:
            if causal and start:
                raise ValueError("a multi-position KV-cache write must start at position 0.")
            k, v = cache.update(layer, start, k, v)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, s, -1)))


class Block(nn.Module):
    """Pre-norm transformer block: h = x + attn(norm(x)); out = h + ffn(norm(h))."""

    def __init__(self, dim: int, num_heads: int, ffn_hidden_dim: int, norm_eps: float, attn_dropout: float,
                 resid_dropout: float, ffn_dropout: float) -> None:
        super().__init__()
        self.attention = Attention(dim, num_heads, attn_dropout, resid_dropout)
        self.feed_forward = FeedForward(dim, ffn_hidden_dim, ffn_dropout)
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.ffn_norm = RMSNorm(dim, norm_eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                start: int = 0) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, cache, layer, start)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """Class embeddings with a null class: `num_classes + 1` rows, row `num_classes` is the unconditional label.

    In training, each label becomes the null class with probability `dropout` (classifier-free guidance).
    """

    def __init__(self, num_classes: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout = dropout
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """labels `b` int64 in [0, num_classes] -> `b d`."""
        if self.training and self.dropout > 0:
            dropped = torch.rand(labels.shape[0], device=labels.device) < self.dropout
            labels = torch.where(dropped, self.num_classes, labels)
        return self.embedding_table(labels)
