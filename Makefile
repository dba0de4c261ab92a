# The README's commands. `make demo` and `make test` work on a fresh machine: they create .venv first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pins: these lie on local disk on our dev machines and install from the index elsewhere.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
RUN_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast test-slurm sweep-demo bench weights shards clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 not found as '$(PYTHON)'; install it or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

## demo: train the tiny tokenizer on the photos bundled with scikit-image (CPU, a few minutes), then evaluate it
demo: setup
	$(PY) -m openmagvit2.demo run_dir=$(RUN_DIR)

## test: the whole suite (unit + end-to-end + real SLURM when run as root)
test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not slurm" $(PYTEST_ARGS)

test-slurm: setup
	$(PY) -m pytest -q -m slurm $(PYTEST_ARGS)

bench: setup
	$(PY) bench/lfq.py
	$(PY) bench/data.py
	$(PY) bench/eval.py
	$(PY) bench/train_step.py

## sweep-demo: a local Hydra multirun (2 x 2) of the CPU demo
sweep-demo: setup
	$(PY) train.py sweep=demo

## weights: fetch the pretrained files (LPIPS VGG/AlexNet, FID Inception) on a machine with network
weights: setup
	$(PY) -m openmagvit2.weights download --all

## shards: convert an ImageNet folder (SRC/train, SRC/val) into WebDataset shards in OUT (resumable)
SRC ?= data/imagenet
OUT ?= data/imagenet_shards
SHARD_SIZE ?= 1000
WORKERS ?= 8
shards: setup
	$(PY) -m openmagvit2.data.make_shards --src $(SRC)/train --out $(OUT) --shard-size $(SHARD_SIZE) --workers $(WORKERS)
	$(PY) -m openmagvit2.data.make_shards --src $(SRC)/val --out $(OUT) --shard-size $(SHARD_SIZE) --workers $(WORKERS)

clean:
	rm -rf $(VENV) .pytest_cache runs outputs multirun
