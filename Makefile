# Two entry points (README.md): `make smoke` (set up + run the study at smoke scale) and
# `make test` (set up + run the test suite); then `make ui` to browse the runs. All are
# idempotent: the virtual environment is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-$(EXTRAS)
EXTRAS ?= dev
# Test workers (pytest-xdist): the slow tests mostly wait on Snakemake and job start-ups, so two
# workers on 2 cores took 71 % of the serial time (718 s vs 175 s + 830 s here). One file per worker (--dist loadfile):
# a module's fixtures (a prepared mini study) are built once. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
XDIST   = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

.PHONY: setup smoke study test test-fast ui browser audio dry-run clean-results

$(VENV)/.installed-%: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[$*]'
	@touch $@

setup: $(STAMP) audio

smoke: $(VENV)/.installed-dev audio
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/smoke.yaml

study: $(VENV)/.installed-dev audio
	$(VENV)/bin/snakemake --cores $(CORES)

# The MLflow UI on the study's DB (after `make smoke` or `make study`): adds the [ui] extra (full
# mlflow) to the venv the first time, then runs `stripes ui` until Ctrl-C. UI_ARGS="--port 5001".
ui: $(VENV)/.installed-dev,ui
	$(VENV)/bin/stripes ui $(UI_ARGS)

dry-run: $(VENV)/.installed-dev
	$(VENV)/bin/snakemake -n --configfile config/smoke.yaml

# The full suite (what CI runs): slow tests included, with the [ui] extra (full mlflow) and, where
# the machine allows it, Debian's Chromium for the MLflow-UI browser test.
test: $(VENV)/.installed-dev,ui browser audio
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# Fast subset for the edit-test loop.
test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

# Best effort: root on Debian installs chromium; elsewhere the browser test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "chromium not installed: the MLflow-UI browser test will be skipped"; }

# Best effort, like `browser`: FluidSynth + a General MIDI soundfont render the sample audio;
# without them stripes.audio falls back to its numpy synthesiser (and the FluidSynth tests skip).
audio:
	@{ command -v fluidsynth >/dev/null 2>&1 && ls /usr/share/sounds/sf2/*.sf2 >/dev/null 2>&1; } \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && apt-get install -y -qq --no-install-recommends fluidsynth fluid-soundfont-gm) >/dev/null 2>&1 \
	  || echo "fluidsynth not installed: sample audio uses the numpy synthesiser"; }

clean-results:
	rm -rf results/data results/tables results/figures results/runs results/tune results/mlflow results/logs results/benchmarks .snakemake
