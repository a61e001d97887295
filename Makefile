# One command sets a fresh machine up and runs the tests: `make test`.
PYTHON ?= python3
VENV ?= .venv
# torch/torchvision are installed first, as a pair that imports together (override for another CUDA/CPU build).
TORCH_PACKAGES ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

BIN := $(VENV)/bin

.PHONY: setup test clean-venv

$(BIN)/.convirt-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PACKAGES)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/.convirt-installed

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
