# The README's commands. `make demo` and `make test` work on a fresh machine: they create .venv first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pins: these lie on local disk on our dev machines and install from the index elsewhere.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
RUN_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=

.PHONY: setup demo demo-ar demo-video test test-fast test-slurm sweep-demo bench weights shards gpu-check gpu-wheels clean

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

## demo-ar: Stage II on the CPU: tokenize the bundled photos with the demo tokenizer, train the tiny AR model, sample
demo-ar: setup
	$(PY) -m openmagvit2.demo_ar run_dir=runs/demo-ar-$(shell date +%Y%m%d-%H%M%S)

## demo-video: the causal video tokenizer on the CPU: camera-motion videos of the bundled photos -> shards -> train
## video_tiny -> eval, with a side-by-side GIF/MP4 and a frame grid of originals vs reconstructions
demo-video: setup
	$(PY) -m openmagvit2.demo_video run_dir=runs/demo-video-$(shell date +%Y%m%d-%H%M%S)

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

## gpu-check: on a CUDA machine, pytest -m gpu + the LFQ and training-step benchmarks in under 8 minutes; writes
## report.md and report.json to OUT (default runs/gpu-check). DEVICE=cpu rehearses it with tiny sizes (a few minutes).
## Missing Python packages are installed from gpu-wheels/ (make gpu-wheels) into runs/gpu-site, never from the network.
DEVICE ?= cuda
GPU_CHECK_OUT := $(if $(filter command line environment,$(origin OUT)),$(OUT),runs/gpu-check)
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_WHEELS ?= gpu-wheels
gpu-check:
	$(GPU_PYTHON) -u bench/gpu_check.py --device $(DEVICE) --out $(GPU_CHECK_OUT) --wheels $(GPU_WHEELS)

## gpu-wheels: download, here, the py3.12 manylinux wheels that the GPU box lacks (it has torch, torchvision, numpy,
## pillow, scipy, scikit-image, rich, einops; no network). wandb is left out (logger.mode=disabled never imports it);
## GPU_WHEELS_WANDB=1 adds it and its dependencies (~30 MB more).
GPU_WHEEL_SPECS := hydra-core==1.3.8 omegaconf==2.3.1 PyYAML==6.0.4 packaging==26.4 \
	hydra-submitit-launcher==1.2.0 submitit==1.5.4 cloudpickle==3.1.3 typing_extensions==4.16.0 \
	lpips==0.1.4 tqdm==4.70.1 clean-fid==0.1.35 requests==2.34.2 charset-normalizer==3.5.3 idna==3.20 \
	urllib3==2.8.0 certifi==2026.10.19.post1 webdataset==1.0.2 braceexpand==0.1.7 safetensors==0.8.0 \
	pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pytest-timeout==2.4.0 Pygments==2.21.0
GPU_WANDB_SPECS := wandb==0.31.0 click gitpython gitdb smmap platformdirs protobuf psutil pydantic pydantic-core \
	annotated-types typing-inspection sentry-sdk
GPU_PLATFORM := --only-binary=:all: --no-deps --python-version 3.12 --implementation cp --abi cp312 \
	--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
gpu-wheels:
	mkdir -p $(GPU_WHEELS)
	$(GPU_PYTHON) -m pip download -q $(GPU_PLATFORM) -d $(GPU_WHEELS) $(GPU_WHEEL_SPECS) $(if $(GPU_WHEELS_WANDB),$(GPU_WANDB_SPECS))
	@# antlr4-python3-runtime (omegaconf's parser) is an sdist only on PyPI: build its pure-Python wheel here.
	$(GPU_PYTHON) -m pip wheel -q --no-deps -w $(GPU_WHEELS) antlr4-python3-runtime==4.9.3
	$(GPU_PYTHON) bench/gpu_check.py --check-wheels --wheels $(GPU_WHEELS)

clean:
	rm -rf $(VENV) .pytest_cache runs outputs multirun
