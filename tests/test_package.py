"""The package works when installed: the wheel and sdist carry conf/, the job templates and the entry points, and
an installed copy (the unpacked wheel, away from the checkout) composes and validates the configs, resolves model
names, plans a launch and runs train.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import CONF_DIR, ROOT

SOURCES = ["pyproject.toml", "README.md", "openmagvit2", "conf", "launch", "train.py", "eval.py"]


def build(kind: str, tmp: Path) -> Path:
    """Build a wheel or sdist with setuptools' PEP 517 backend, from a copy of the sources (the checkout stays clean)."""
    src, dist = tmp / "src", tmp / "dist"
    if not src.exists():
        src.mkdir()
        for name in SOURCES:
            source = ROOT / name
            if source.is_dir():  # symlinks=True keeps openmagvit2/project/* pointing into the copy
                shutil.copytree(source, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(source, src / name)
    done = subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.build_{kind}"
                           f"({str(dist)!r}))"], cwd=src, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dist / done.stdout.strip().splitlines()[-1]


def shipped_conf() -> set[str]:
    return {str(p.relative_to(CONF_DIR)) for p in CONF_DIR.rglob("*") if p.suffix in (".yaml", ".md")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel unpacked into a site dir (what `pip install` puts in site-packages)."""
    tmp = tmp_path_factory.mktemp("package")
    wheel = build("wheel", tmp)
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    conf = {name.removeprefix("openmagvit2/project/conf/") for name in names
            if name.startswith("openmagvit2/project/conf/")}
    assert conf == shipped_conf()
    assert {"openmagvit2/project/train.py", "openmagvit2/project/eval.py", "openmagvit2/project/launch/train.sbatch",
            "openmagvit2/project/launch/eval.sbatch"} <= names
    return site


def run_installed(site: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_sdist_carries_the_configs_and_templates(tmp_path: Path) -> None:
    sdist = build("sdist", tmp_path)
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {f"openmagvit2/project/conf/{name}" for name in shipped_conf()} <= names
    assert {"openmagvit2/project/train.py", "openmagvit2/project/launch/train.sbatch"} <= names


def test_installed_package_finds_and_uses_its_configs(installed: Path, tmp_path: Path) -> None:
    script = """
import openmagvit2, openmagvit2.paths as paths
from hydra import compose, initialize_config_dir
from openmagvit2.config import model_preset, validate_config
from openmagvit2.launch import make_plan, validate_plan
assert paths.conf_dir().is_relative_to(SITE), paths.conf_dir()
with initialize_config_dir(config_dir=str(paths.conf_dir()), version_base="1.3"):
    config = validate_config(compose(config_name="config", overrides=["experiment=demo"]))
assert config.model.ch_mult == [1, 2, 2] and model_preset("openmagvit2_v3_256_large")["num_res_blocks"] == 4
plan = make_plan("train", ["cluster=slurm_local", "experiment=demo"])
validate_plan(plan)
assert plan.template.is_relative_to(SITE) and plan.entry.is_relative_to(SITE) and plan.entry.is_file()
print(openmagvit2.__file__)
""".replace("SITE", repr(str(installed.resolve())))
    result = run_installed(installed, ["-c", script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().startswith(str(installed.resolve()))


def test_installed_train_py_composes_from_the_package(installed: Path, tmp_path: Path) -> None:
    result = run_installed(installed, [str(installed / "openmagvit2" / "project" / "train.py"), "experiment=demo",
                                       "debug=fast", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "image_size: 32" in result.stdout and "experiment_name: demo" in result.stdout
