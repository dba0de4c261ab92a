"""What train.py and eval.py do with their command line before any work: a short `--help` printed before the slow
imports, `+group.key=` additions refused when the group's schema has no such key, and the W&B name of a sweep job.

At load time this module imports only the standard library (Hydra and the schema when a check runs), so `--help`
answers at once.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from openmagvit2.errors import ConfigError

HELP = {
    "train": """\
Train a MAGVIT-2 tokenizer (images or video) or the Stage II generator. Settings: group=option and key=value.

Examples
  python train.py experiment=demo                          # the CPU demo, a few minutes
  python train.py experiment=demo debug=fast               # tiny and quick
  python train.py experiment=demo loss.perceptual_weight=0 # offline: no LPIPS weights needed
  python train.py experiment=in256_base data=imagenet_wds data.root=/data/imagenet_shards
  torchrun --nproc_per_node=8 train.py experiment=in256_large
  python train.py train.init_from=hf://TencentARC/Open-MAGVIT2-Tokenizer-256-resolution experiment=in256_large
  python train.py -m experiment=demo loss.codebook_weight=0.05,0.1   # a sweep (or sweep=demo)
  python -m openmagvit2.launch submit cluster=slurm_32gpu experiment=in256_large   # SLURM
  python train.py experiment=ucf101_128_large data.root=/data/ucf101_shards   # the causal video tokenizer

Groups (group=option)
{groups}

Keys (key=value; each group's keys, defaults and bounds: the dataclasses in openmagvit2/config.py)
  train.max_steps train.batch_size train.precision train.resume train.init_from  optim.lr  loss.*  model.*
  quantizer.codebook_bits  data.root data.image_size data.num_workers  logger.mode  device seed
  A typo is refused with the closest key; `+key=` adds only keys a group really has.

More: python train.py experiment=demo --cfg job   (the composed config)   docs/*.md, conf/sweep/README.md
""",
    "eval": """\
Evaluate a tokenizer: rFID (video: rFVD), PSNR, SSIM, LPIPS and codebook usage over a validation set.

Examples
  python eval.py ckpt=runs/demo/.../checkpoints/step_00000400.pt metrics=[psnr,ssim,usage]   # no weights needed
  python eval.py ckpt=hf://TencentARC/Open-MAGVIT2-Tokenizer-256-resolution \\
      data=imagenet_folder data.val_dir=/data/imagenet/val data.image_size=256 fid_mode=legacy_pytorch
  python eval.py ckpt=imagenet_128_L.ckpt data=imagenet_wds "data.val_shards='/data/val-{{000000..000049}}.tar'"
  torchrun --nproc_per_node=8 eval.py ckpt=... data=imagenet_folder data.val_dir=/data/imagenet/val
  python eval.py ckpt=hf://TencentARC/Open-MAGVIT2-Tokenizer-262144-Video data=video_wds data.root=/data/ucf101_shards

Groups (group=option)
{groups}

Keys (key=value)
  ckpt (a .pt/.ckpt file, a save_pretrained folder or hf://<released repo>)  metrics=[rfid,psnr,ssim,lpips,usage]
  protocol=centre|reference (clips)  pad_to  fid_mode=clean|legacy_pytorch  use_ema  precision=fp32|bf16|fp16  batch_size  max_images  grid_images  device
  Only the validation split is read (data.val_dir / data.val_shards); rFID and LPIPS need `make weights`.

More: conf/eval.yaml, docs/evaluation.md
""",
}
# The groups each entry point composes (eval.py shares the model/quantizer/data/logger groups with training).
GROUPS = {"train": ("experiment", "task", "model", "video_model", "ar_model", "quantizer", "loss", "data", "optim",
                    "logger", "cluster", "debug", "sweep"),
          "eval": ("model", "quantizer", "data", "logger")}


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files of conf/<group>/ (`_`-prefixed ones are shared parts)."""
    from openmagvit2.paths import conf_dir

    return sorted(path.stem for path in (conf_dir() / group).glob("*.yaml") if not path.stem.startswith("_"))


def help_text(script: str) -> str:
    groups = "\n".join(f"  {group:<12}{' '.join(group_options(group))}" for group in GROUPS[script])
    return HELP[script].format(groups=groups)


def wants_help(argv: Sequence[str]) -> bool:
    """`--help` / `-h` (Hydra's own `--hydra-help` is left to Hydra)."""
    return any(arg in ("--help", "-h") for arg in argv)


def print_help(script: str) -> int:
    print(help_text(script), end="")
    return 0


# ------------------------------------------------------------------------------------------------- + additions
def _schemas(script: str, data_name: str | None) -> dict[str, Any]:
    """The dataclass behind each group of `script`'s config."""
    from openmagvit2 import config

    schemas: dict[str, Any] = {"model": config.ModelConfig, "quantizer": config.QuantizerConfig,
                               "logger": config.LoggerConfig, "data": config.DATA_SOURCES.get(data_name or "")}
    if script == "train":
        schemas.update(train=config.TrainConfig, loss=config.LossConfig, optim=config.OptimConfig,
                       cluster=config.ClusterConfig)
    return schemas


def unknown_addition(overrides: Iterable[str], script: str, data_name: str | None) -> str | None:
    """The message for the first `+group.key=value` (or `++`) whose group's schema has no `key`, else None.

    Hydra lets `+` add any key, even to a typed group, and the code then never reads it: `+train.max_step=5` would
    train the default number of steps. Keys under `hydra.` and groups without a schema are not checked."""
    schemas = _schemas(script, data_name)
    for override in overrides:
        if not override.startswith("+") or "=" not in override:
            continue
        key, value = override.lstrip("+").split("=", 1)
        group, _, name = key.partition(".")
        schema = schemas.get(group)
        if not name or schema is None:
            continue
        name = name.split(".")[0]
        fields = [field.name for field in dataclasses.fields(schema)]
        if name in fields:
            continue
        close = difflib.get_close_matches(name, fields, n=1)
        hint = (f"did you mean {group}.{close[0]}={value}? (set existing keys without '+')" if close
                else f"{group} keys: {', '.join(fields)}")
        return f"{override}: {group} has no key {name!r}, so it would be ignored; {hint}."
    return None


def check_additions(overrides: Iterable[str], script: str, data_name: str | None) -> None:
    message = unknown_addition(overrides, script, data_name)
    if message:
        raise ConfigError(message)


# -------------------------------------------------------------------------------------------------- sweep names
def swept_keys(argv: Sequence[str], sweeper_params: Any) -> list[str]:
    """The keys a multirun sweeps: those of `hydra.sweeper.params` (sweep files) and the command line's sweep
    overrides (`a=1,2`, `range(...)`, `choice(...)`, `glob(...)`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [str(key) for key in (sweeper_params or {})]
    candidates = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # noqa: BLE001  (a command line Hydra accepted; an odd argument only costs the name)
        parsed = []
    keys += [override.get_key_element().lstrip("+~") for override in parsed if override.is_sweep_override()]
    return list(dict.fromkeys(keys))


def sweep_run_name(job_overrides: Sequence[str], swept: Sequence[str]) -> str | None:
    """`key=value` of the swept keys only, from a job's overrides (e.g. `loss.perceptual_weight=0.1`); None if the
    job sets none of them."""
    values = {}
    for override in job_overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if sep and key in swept:
            values[key] = value
    return ",".join(f"{key}={values[key]}" for key in swept if key in values) or None
