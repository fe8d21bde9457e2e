# Two entry points (README.md): `make smoke` (set up + run the study at smoke scale) and
# `make test` (set up + run the test suite). Both are idempotent: the virtual environment is
# rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-$(EXTRAS)
EXTRAS ?= dev

.PHONY: setup smoke study test test-fast browser dry-run clean-results

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

# The full suite (what CI runs): slow tests included, with the [ui] extra (full mlflow) and, where
# the machine allows it, Debian's Chromium for the MLflow-UI browser test.
test: $(VENV)/.installed-dev,ui browser
	$(PY) -m pytest $(PYTEST_ARGS)

# Fast subset for the edit-test loop.
test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Best effort: root on Debian installs chromium; elsewhere the browser test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "chromium not installed: the MLflow-UI browser test will be skipped"; }

clean-results:
	rm -rf results/data results/tables results/figures results/runs results/tune results/mlflow results/logs results/benchmarks .snakemake
