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
# e.g. DEMO_ARGS="--model my-org/convirt-demo --gallery /data/pngs" (docs/demo.md)
DEMO_ARGS ?=

BIN := $(VENV)/bin

.PHONY: setup test test-fast lint pretrain demo browser clean-venv

$(BIN)/.convirt-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PACKAGES)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/.convirt-installed

test: setup browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# everything but the end-to-end checks marked slow
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

# Headless Chromium and its driver for tests/test_demo_browser.py (the two Debian packages, installed together so that
# their versions match). Without root or apt-get the browser test skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
		|| echo "make browser: apt-get could not install chromium chromium-driver:" \
		        "tests/test_demo_browser.py will be skipped"; \
	else \
		echo "make browser: chromium/chromedriver missing and cannot be installed here (needs root and apt-get):" \
		     "tests/test_demo_browser.py will be skipped; install the Debian packages chromium and chromium-driver"; \
	fi

demo: setup
	$(BIN)/python -m convirt_hf.demo $(DEMO_ARGS)

pretrain: setup
	$(BIN)/accelerate launch $(ACCELERATE_ARGS) training/pretrain.py $(PRETRAIN_ARGS)

clean-venv:
	rm -rf $(VENV)
