# make demo  : venv + data + the main job (a study on full Fashion-MNIST, embedded default: local Ray, SQLite MLflow)
# make test  : venv + data + the default test suite (CI runs `make test-slow` after it)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TORCH := torch==2.13.0
FMNIST_SYS := /usr/share/datasets/fashion-mnist
FMNIST_LOCAL := data/fashion-mnist
FORTUNES_SYS := /usr/share/games/fortunes
FORTUNES_LOCAL := data/fortunes
PYTEST_ARGS ?=

.PHONY: setup venv data e2e-deps demo lint test test-slow bench clean-runs

setup: venv data

venv: $(VENV)/.installed

# torch first and pinned: the CPU wheel here, the CUDA build on a GPU box; unpinned it pulls GBs of CUDA packages.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH)
	$(PIP) install -r requirements.lock
	$(PIP) install -e '.[test]'
	touch $@

# Fashion-MNIST from Debian's dataset-fashion-mnist: apt-get as root, else apt-get download + dpkg-deb -x.
data:
	@if [ -f $(FMNIST_SYS)/train-images-idx3-ubyte.gz ] || [ -f $(FMNIST_LOCAL)/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "fashion-mnist: present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	else \
	  mkdir -p $(FMNIST_LOCAL) && cd $(FMNIST_LOCAL) && apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb . ; \
	fi
	@# the charlm task's corpus: Debian's fortunes text, installed the same way
	@if [ -f $(FORTUNES_SYS)/wisdom ] || [ -f $(FORTUNES_LOCAL)$(FORTUNES_SYS)/wisdom ]; then \
	  echo "fortunes: present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q fortunes || (apt-get update -q && apt-get install -y -q fortunes)) >/dev/null; \
	else \
	  mkdir -p $(FORTUNES_LOCAL) && cd $(FORTUNES_LOCAL) && apt-get download fortunes && dpkg-deb -x fortunes_*.deb . ; \
	fi

# The slow tier's browser test drives Debian's Chromium with chromedriver (no browser download at run time).
e2e-deps:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then echo "chromium: present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q chromium chromium-driver || (apt-get update -q && apt-get install -y -q chromium chromium-driver)) >/dev/null; \
	else echo "install Debian's chromium and chromium-driver (needs root) for the browser test" >&2; exit 1; fi
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then echo "postgresql: present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q postgresql || (apt-get update -q && apt-get install -y -q postgresql)) >/dev/null; \
	else echo "install Debian's postgresql (needs root) for the PostgreSQL tests (tests/e2e/pgserver.py)" >&2; exit 1; fi

demo: setup
	$(VENV)/bin/largebatch tune tune_spaces/fashion-mnist.yaml
	@echo
	@echo "Browse the trials:  $(VENV)/bin/largebatch ui   (starts the MLflow UI and prints the study's link)"

# ruff and mypy, configured in pyproject.toml; a finding fails `make test` (and CI)
lint: setup
	$(VENV)/bin/ruff check largebatch tests bench
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest -q -m "not slow" --durations=15 $(PYTEST_ARGS)

test-slow: setup e2e-deps
	$(PY) -m pytest -q -m "slow" --durations=15 $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.run_all

# the loop on one GPU: fp32 vs bf16, GPU tensors vs a pinned-memory DataLoader, ResNet-20, charlm, loop vs hand loop;
# on a machine without a GPU it says so, exit 0 (bench/gpu_check.py; --device cpu is a dry run)
.PHONY: gpu-check
gpu-check: setup
	$(PY) -m bench.gpu_check

clean-runs:
	rm -rf runs
