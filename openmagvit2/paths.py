"""Where the project's files are: the Hydra configs, the job-script templates and the entry-point scripts.

`openmagvit2/project/` holds links to the checkout's top-level `conf/`, `launch/`, `train.py` and `eval.py`; the wheel
and sdist carry copies of them there (package data, see pyproject.toml), so the same paths work in a checkout and in
an installed package.
"""
from __future__ import annotations

from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent / "project"


def conf_dir() -> Path:
    """The Hydra config directory (`conf/`: config.yaml, eval.yaml and the groups)."""
    return (PROJECT_DIR / "conf").resolve()


def template_dir() -> Path:
    """The SLURM job-script templates (`launch/*.sbatch`)."""
    return (PROJECT_DIR / "launch").resolve()


def entry_script(name: str) -> Path:
    """An entry point by name: `train` or `eval` (its Hydra config path is the `conf/` beside it)."""
    return (PROJECT_DIR / f"{name}.py").resolve()


def shipped_options(group: str) -> list[str]:
    """The option names of a shipped config group (`conf/<group>/*.yaml`), e.g. `model` -> tiny, ...; private
    files (`_imagenet_recipe`) excluded."""
    return sorted(path.stem for path in (conf_dir() / group).glob("*.yaml") if not path.stem.startswith("_"))


def shipped_option(group: str, name: str) -> dict | None:
    """The values of `conf/<group>/<name>.yaml` without its `defaults` list and `name` key; None when there is none.

    The one reader of the named architectures (tokenizer, video tokenizer, AR model): their YAML files are the one
    registry, shipped with the package."""
    from omegaconf import OmegaConf

    path = conf_dir() / group / f"{name}.yaml"
    if not path.is_file():
        return None
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    values.pop("defaults", None)
    values.pop("name", None)
    return values
