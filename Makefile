# Two commands do all set-up on a fresh clone (each creates and reuses .venv by itself):
#   make reproduce   run the main job on the embedded default (CPU smoke of the whole pipeline)
#   make test        run the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sf-mamba-installed
# mmcv 2.1.0 WITH compiled ops (detection needs NMS/RoIAlign): a prebuilt wheel from MMCV_WHEEL_DIR if
# one fits, else a one-time build from PyPI's sdist (~20-35 min on 2 cores, then cached; see
# docs/install.md). MMCV=lite is the explicit opt-in to mmcv-lite (no ops: detection is skipped).
MMCV ?= full
MMCV_WHEEL_DIR ?= ../shared/wheels
MMCV_MODE := $(if $(filter lite,$(MMCV)),lite,auto)
PYTEST_ARGS ?=

.PHONY: venv reproduce test test-fast smoke bench clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile tools/install_mmcv.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (CPython 3.11 is required)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade 'pip>=24'
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) tools/install_mmcv.py --mode $(MMCV_MODE) --wheel-dir "$(MMCV_WHEEL_DIR)"
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
