# Two commands do all set-up on a fresh clone (each creates and reuses .venv by itself):
#   make reproduce   run the main job on the embedded default (CPU smoke of the whole pipeline)
#   make test        run the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sf-mamba-installed
# Prebuilt mmcv 2.1.0 with CPU ops (see docs/install.md); mmcv-lite is the fallback.
MMCV_WHEEL ?= $(firstword $(wildcard ../shared/wheels/mmcv-2.1.0-cp311-cp311-linux_x86_64.whl))
PYTEST_ARGS ?=

.PHONY: venv reproduce test test-fast smoke bench clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (CPython 3.11 is required)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade 'pip>=24'
	$(PY) -m pip install --quiet -e '.[dev]'
	@if [ -n "$(MMCV_WHEEL)" ]; then \
	  echo "installing mmcv with CPU ops from $(MMCV_WHEEL)"; \
	  $(PY) -m pip install --quiet --no-deps "$(MMCV_WHEEL)"; \
	else \
	  echo "no prebuilt mmcv wheel found: installing mmcv-lite (no compiled ops; enough for UperNet)"; \
	  $(PY) -m pip install --quiet mmcv-lite==2.1.0; \
	fi
	touch $(STAMP)

# The whole DAG on configs/default.yaml (CPU smoke of every research question).
reproduce: venv
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/snakemake --cores 2

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/cpu_speed.py

clean-venv:
	rm -rf $(VENV)
