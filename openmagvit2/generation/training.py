"""`task=generator`: Stage II training of the AR model in the same loop as the tokenizer (train.py, one loop).

Batches are `(indices b n, labels b)` from token shards (`data=tokens`, written by `python -m openmagvit2.tokenize`)
or `(images b 3 H W, labels b)` from an image source, encoded in the loop by the frozen `task.tokenizer` as the
reference does (a new random crop every epoch). The recipe (REFERENCE-STAGE2 §7): AdamW (0.9, 0.95), eps 1e-8, weight
decay on `task.weight_decay_scope`, the `linear` schedule, grad clip 1.0, label dropout 0.1 inside the model.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchvision.utils import save_image

from openmagvit2.config import ConfigError, RunConfig
from openmagvit2.data import build_val_loader, has_validation_set
from openmagvit2.generation.model import ARModel
from openmagvit2.generation.tokens import split_indices
from openmagvit2.models import Tokenizer
from openmagvit2.train.distributed import DistributedContext, mean_across_ranks
from openmagvit2.train.evaluation import count_parameters
from openmagvit2.train.precision import Precision
from openmagvit2.train.step import clip_and_step

SAMPLE_GRID = 8  # samples in the grid logged every train.image_every steps


class GeneratorLosses(NamedTuple):
    """One step's AR loss (graph attached) and detached logs (per sub-token losses and accuracies)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor]
    labels: torch.Tensor

    def non_finite(self) -> torch.Tensor:
        return ~torch.isfinite(self.loss)


def parameter_groups(model: nn.Module, weight_decay: float, scope: str) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices (dim >= 2: linears, embeddings) or on everything (the reference's accident)."""
    decayed = [p for p in model.parameters() if p.requires_grad and (scope == "all" or p.dim() >= 2)]
    ids = {id(p) for p in decayed}
    kept = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]


def subtoken_logs(logits: tuple[torch.Tensor, ...], losses: tuple[torch.Tensor, ...], targets: list[torch.Tensor],
                  total: torch.Tensor, prefix: str = "") -> dict[str, torch.Tensor]:
    """`loss/ar`, and per sub-token i: `loss/sub{i}` (nats) and `acc/sub{i}` (teacher-forced top-1 accuracy)."""
    logs = {f"{prefix}loss/ar": total.detach().float()}
    for i, (logit, loss, target) in enumerate(zip(logits, losses, targets)):
        logs[f"{prefix}loss/sub{i}"] = loss.detach().float()
        logs[f"{prefix}acc/sub{i}"] = (logit.detach().argmax(-1) == target).float().mean()
    return logs


def check_data_fits(cfg: RunConfig) -> None:
    """Refuse token data the AR model cannot read (another grid, more classes), before anything is built."""
    if cfg.data.name != "tokens":
        return
    model, data = cfg.ar_model, cfg.data
    if data.grid_size != model.grid_size:
        raise ConfigError(f"the tokens in {data.train_index} are {data.grid_size}x{data.grid_size} per image but "
                          f"ar_model.grid_size={model.grid_size}: set ar_model.grid_size={data.grid_size}.")
    if data.num_classes > model.num_classes:
        raise ConfigError(f"the tokens in {data.train_index} have {data.num_classes} classes but "
                          f"ar_model.num_classes={model.num_classes}: set ar_model.num_classes={data.num_classes}.")


class GeneratorTask:
    """Stage II: the AR model, its optimiser and scaler, the frozen tokenizer (sample grids, in-loop encoding)."""

    def __init__(self, cfg: RunConfig, model: ARModel, model_ddp: nn.Module, optimizer: torch.optim.Optimizer,
                 precision: Precision, tokenizer: Tokenizer | None, ctx: DistributedContext, notes: list[str]) -> None:
        self.cfg, self.model, self.model_ddp, self.optimizer = cfg, model, model_ddp, optimizer
        self.precision, self.tokenizer, self.ctx, self.notes = precision, tokenizer, ctx, notes
        self.scaler = precision.make_scaler()
        self.optimizers = (optimizer,)
        self.base_lrs = (cfg.optim.lr,)
        self.encode_images = cfg.data.name != "tokens"
        self.tokens_per_sample = model.config.grid_size ** 2
        self.val_batches = self._val_tokens()

    @classmethod
    def build(cls, cfg: RunConfig, ctx: DistributedContext, fine_tune: bool) -> "GeneratorTask":
        if cfg.ar_model is None:
            raise ConfigError("task=generator needs an AR model: choose one with ar_model=ar_tiny|ar_b|ar_l|ar_xl.")
        tokenizer = None
        if cfg.task.tokenizer is not None:
            tokenizer = Tokenizer.from_checkpoint(cfg.task.tokenizer, use_ema=cfg.task.tokenizer_use_ema)
            tokenizer = tokenizer.to(ctx.device).eval().requires_grad_(False)
        elif cfg.data.name != "tokens":
            raise ConfigError(f"task=generator with data={cfg.data.name} encodes images in the loop: set "
                              "task.tokenizer=<tokenizer checkpoint>, or train on token shards with data=tokens.")
        check_data_fits(cfg)
        model = ARModel(**dataclasses.asdict(cfg.ar_model)).to(ctx.device)
        notes = []
        if fine_tune and cfg.train.init_from:
            initial = ARModel.from_checkpoint(cfg.train.init_from, model=dataclasses.asdict(cfg.ar_model))
            model.load_state_dict(initial.state_dict())
            notes.append(f"initialised the AR model from {cfg.train.init_from}")
        optimizer = torch.optim.AdamW(parameter_groups(model, cfg.optim.weight_decay, cfg.task.weight_decay_scope),
                                      lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=1e-8)
        model_ddp = DistributedDataParallel(model) if ctx.is_distributed else model
        if cfg.train.compile:
            model_ddp = torch.compile(model_ddp)
        notes.append(f"AR model {count_parameters(model) / 1e6:.2f}M parameters, {model.config.grid_size}^2 tokens "
                     f"as {model.config.factorized_bits}-bit sub-tokens, {model.config.num_classes} classes; "
                     f"weight decay {cfg.optim.weight_decay} on {cfg.task.weight_decay_scope}")
        return cls(cfg, model, model_ddp, optimizer, Precision(cfg.train.precision, ctx.device), tokenizer, ctx,
                   notes)

    @property
    def loader_options(self) -> dict[str, Any]:
        """What the data loaders must give this task: labelled batches."""
        return {"labels": True}

    def throughput(self, samples_per_s: float) -> dict[str, float]:
        return {"img_per_s": samples_per_s, "tokens_per_s": samples_per_s * self.tokens_per_sample}

    def to_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = batch
        return inputs.to(self.ctx.device, non_blocking=True), labels.to(self.ctx.device, non_blocking=True)

    @torch.no_grad()
    def tokens_of(self, inputs: torch.Tensor) -> torch.Tensor:
        """`b n` token ids: the batch itself (token data) or the frozen tokenizer's encoding of images."""
        if not self.encode_images:
            return inputs.long()
        with self.precision.autocast():
            return self.tokenizer.encode(inputs).indices.flatten(1)

    def compute_losses(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> GeneratorLosses:
        inputs, labels = batch
        indices = self.tokens_of(inputs)
        with self.precision.autocast():
            output = self.model_ddp(indices, labels)
        targets = self._targets(indices)
        return GeneratorLosses(output.loss, subtoken_logs(output.logits, output.subtoken_losses, targets,
                                                          output.loss), labels)

    def _targets(self, indices: torch.Tensor) -> list[torch.Tensor]:
        return list(split_indices(indices, self.model.config.factorized_bits))

    def apply_updates(self, losses: GeneratorLosses) -> dict[str, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses.loss).backward()
        return {"grad_norm/ar": clip_and_step(self.optimizer, self.scaler, self.model.parameters(),
                                              self.cfg.train.grad_clip)}

    def step_logs(self, losses: GeneratorLosses) -> dict[str, torch.Tensor]:
        return losses.logs

    def checkpointed(self) -> dict[str, Any]:
        return {"ar_model": self.model, "opt_ar": self.optimizer, "scaler_ar": self.scaler}

    def extra_state(self) -> dict[str, Any]:
        """`ar_hparams` (with `ar_model`) is what `ARModel.from_checkpoint` reads from a training checkpoint."""
        return {"ar_hparams": self.model.hparams, "tokenizer_path": self.cfg.task.tokenizer}

    def _val_tokens(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The fixed val subset as `(indices, labels)` on the CPU (tokens are small; images are encoded once)."""
        if not has_validation_set(self.cfg.data):
            return None
        loader = build_val_loader(self.cfg.data, self.cfg.train.batch_size, self.ctx.rank, self.ctx.world_size,
                                  max_images=self.cfg.train.eval_images, labels=True)
        return [(self.tokens_of(inputs.to(self.ctx.device)).cpu(), labels) for inputs, labels in loader]

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Teacher-forced NLL (nats per token, summed over sub-tokens) and accuracies on the val subset, over ranks."""
        if self.val_batches is None:
            return {}
        self.model.eval()
        totals: dict[str, torch.Tensor] = {}
        count = torch.zeros((), device=self.ctx.device)
        for indices, labels in self.val_batches:
            indices, labels = indices.to(self.ctx.device), labels.to(self.ctx.device)
            with self.precision.autocast():
                output = self.model(indices, labels)
            logs = subtoken_logs(output.logits, output.subtoken_losses, self._targets(indices), output.loss, "val/")
            for name, value in logs.items():
                totals[name] = totals.get(name, torch.zeros((), device=self.ctx.device)) + value * len(labels)
            count += len(labels)
        self.model.train()
        # Each rank's weighted sums and counts, averaged: the ratio is the mean over every val sample.
        means = mean_across_ranks({**totals, "count": count}, self.ctx)
        return {name: value / means["count"] for name, value in means.items() if name != "count"}

    @torch.no_grad()
    def save_images(self, batch: Any, losses: GeneratorLosses, path: Path) -> Path | None:
        """A grid of samples for the batch's first labels (fixed seed), decoded by the frozen tokenizer."""
        if self.tokenizer is None:
            return None
        self.model.eval()
        labels = losses.labels[:SAMPLE_GRID]
        generator = torch.Generator(self.ctx.device).manual_seed(0)
        indices = self.model.generate(labels, cfg_scale=self.cfg.task.sample_cfg_scale, generator=generator)
        self.model.train()
        side = self.model.config.grid_size
        images = self.tokenizer.decode_indices(indices.view(-1, side, side)).clamp(-1, 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image((images + 1) / 2, path, nrow=SAMPLE_GRID)
        return path
