# Two commands do everything on a fresh machine: `make pretrain` (the default pretraining run) and `make test`.
# `make lint` and `make test-fast` are for everyday work (see CONTRIBUTING.md).
PYTHON ?= python3
VENV ?= .venv
# torch/torchvision are installed first, as a pair that imports together (override for another CUDA/CPU build).
TORCH_PACKAGES ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# e.g. ACCELERATE_ARGS="--multi_gpu --num_processes 4"; empty uses `accelerate config` (or one process)
ACCELERATE_ARGS ?=
PRETRAIN_ARGS ?=

BIN := $(VENV)/bin

.PHONY: setup test test-fast lint pretrain clean-venv

$(BIN)/.convirt-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PACKAGES)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/.convirt-installed

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# everything but the end-to-end checks marked slow
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

pretrain: setup
	$(BIN)/accelerate launch $(ACCELERATE_ARGS) training/pretrain.py $(PRETRAIN_ARGS)

clean-venv:
	rm -rf $(VENV)
