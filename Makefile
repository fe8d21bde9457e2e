# Two entry points (README.md): `make smoke` (set up + run the study at smoke scale) and
# `make test` (set up + run the test suite). Both are idempotent: the virtual environment is
# rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-$(EXTRAS)
EXTRAS ?= dev

.PHONY: setup smoke study test test-all dry-run clean-results

$(VENV)/.installed-%: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[$*]'
	@touch $@

setup: $(STAMP)

smoke: $(VENV)/.installed-dev
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/smoke.yaml

study: $(VENV)/.installed-dev
	$(VENV)/bin/snakemake --cores $(CORES)

dry-run: $(VENV)/.installed-dev
	$(VENV)/bin/snakemake -n --configfile config/smoke.yaml

test: $(VENV)/.installed-dev
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(VENV)/.installed-dev
	$(PY) -m pytest $(PYTEST_ARGS)

clean-results:
	rm -rf results/data results/tables results/figures results/runs results/tune results/mlflow results/logs results/benchmarks .snakemake
