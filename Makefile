# Two commands do all set-up on a fresh clone (each creates and reuses .venv by itself):
#   make reproduce   run the main job on the embedded default (CPU smoke of the whole pipeline)
#   make test        run the test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# mmcv 2.1.0 WITH compiled ops (detection needs NMS/RoIAlign): a prebuilt wheel from MMCV_WHEEL_DIR if
# one fits, else a one-time build from PyPI's sdist (~20-35 min on 2 cores, then cached; see
# docs/install.md). MMCV=lite is the explicit opt-in to mmcv-lite (no ops: detection is skipped).
# The venv keeps the mode it was installed in (one stamp per mode: .sf-mamba-installed-mmcv-full|lite)
# until another is asked for: `make venv MMCV=lite` after a full install (or `MMCV=full` after a lite
# one) finds no stamp for its mode and reinstalls (tools/install_mmcv.py swaps mmcv and mmcv-lite);
# a plain `make test` after a lite install stays lite.
INSTALLED_MMCV := $(patsubst $(VENV)/.sf-mamba-installed-mmcv-%,%,$(firstword $(wildcard $(VENV)/.sf-mamba-installed-mmcv-*)))
MMCV ?= $(if $(filter lite,$(INSTALLED_MMCV)),lite,full)
MMCV_WHEEL_DIR ?= ../shared/wheels
MMCV_MODE := $(if $(filter lite,$(MMCV)),lite,auto)
STAMP := $(VENV)/.sf-mamba-installed-mmcv-$(if $(filter lite,$(MMCV)),lite,full)
PYTEST_ARGS ?=

.PHONY: venv reproduce test test-fast smoke bench clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile tools/install_mmcv.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (CPython 3.11 is required)" >&2; exit 1; }
	rm -f $(VENV)/.sf-mamba-installed*  # a failed install or a switch of mode leaves no stamp
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
