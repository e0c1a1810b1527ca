# Shelfcast — every step a user or CI takes is a target here.
# `make run`  : set up and run the pipeline on embedded defaults.
# `make test` : set up and run the test suite (what .ci/run calls).

# The Python that makes .venv: python3.11 where one runs (pyenv's shim for a version not selected is on PATH and
# does not), else python3. scripts/venv_python.py refuses one pyproject.toml's requires-python does not take.
PYTHON ?= $(shell python3.11 -c '' 2>/dev/null && command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# `make test` runs the default suite in this many pytest-xdist processes (the cores this process may use, its
# cgroup's CPU limit counted: engine/cores.py; at most 4: each holds its own session fixtures and Numba kernels);
# 0 or 1 runs it in one process. On 2 cores, about half the time of one process (README "Tests" has the figures).
# Not nproc: it answers OMP_NUM_THREADS (set to 1 by many CI setups) and no CPU quota.
TEST_WORKERS ?= $(shell n=$$($(PYTHON) "$(CURDIR)/engine/cores.py" 2>/dev/null || echo 1); echo $$(( n > 4 ? 4 : n )))

export PIP_DISABLE_PIP_VERSION_CHECK = 1
# Neither tool reports usage from a make target: DVC sends analytics, MLflow 3 telemetry (and writes
# ~/.config/mlflow from every process) unless told not to; a team's CI is often offline or HOME read-only.
export DVC_NO_ANALYTICS = 1
export MLFLOW_DISABLE_TELEMETRY = true

.DEFAULT_GOAL := help

# CI/CD steps (ml-pipeline, promote, build-image, deploy, drift ...): one make target each.
include monitoring/delivery.mk

.PHONY: venv run serve test test-slow test-long lint bench clean help dag status metrics plots mlflow-ui sweep prune

# `make help` is generated from the `## ` comment after each target in every Makefile read
# (this one and monitoring/delivery.mk), so it cannot fall behind; a test checks every target has one.
help:                 ## this list
	@awk -F ':[^#]*## ' '/^[A-Za-z][A-Za-z0-9_-]*:[^=]*## / { printf "  make %-17s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

venv: $(STAMP)        ## create .venv and install Shelfcast with its test extras (every target does this first)

# More of pyproject.toml's extras to install with the test ones, comma-separated: e.g. VENV_EXTRAS=s3 (DVC's S3
# plugin; the workflows set it in their env). Read when .venv is (re)made: `make clean` first to add one later.
VENV_EXTRAS ?=
VENV_INSTALL = .[test$(if $(strip $(VENV_EXTRAS)),$(comma)$(strip $(VENV_EXTRAS)))]
comma := ,

$(STAMP): pyproject.toml
	@echo "venv: installing Shelfcast and its pinned dependencies into $(VENV) (the first time: a few minutes)"
	@[ -n "$(PYTHON)" ] || { echo "make venv: no python3.11 or python3 on PATH: install Python 3.11, or name one:" \
	  "make venv PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) scripts/venv_python.py $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python scripts/pip_install.py -e '$(VENV_INSTALL)'
	$(BIN)/python -c "import engine, numba, pandas, mlflow, dvc"
	touch $(STAMP)
	@echo "venv: ready ($(VENV)); use it with \`source $(VENV)/bin/activate\` or through the make targets"

run: $(STAMP)         ## set up, run the pipeline (dvc repro), promote the model, serve the app on :5005
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/python -m pipeline.promote
	$(MAKE) serve

serve: $(STAMP)       ## serve models/production with gunicorn on http://localhost:5005
	$(BIN)/gunicorn --config app/gunicorn_conf.py app.wsgi:app

test: $(STAMP)        ## set up, then run the default test suite
	scripts/install_test_services.sh
	scripts/install_browser.sh || echo "make test: Chromium could not be installed; the browser test will skip"
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist worksteal) $(PYTEST_ARGS)

lint: $(STAMP)        ## ruff over the whole repository (configured in pyproject.toml; make test runs it first)
	$(BIN)/ruff check .

test-slow: $(STAMP)   ## the end-to-end suites with real services (marker: slow; .ci/run runs them after make test)
	scripts/install_test_services.sh
	$(BIN)/python -m pytest -m 'slow and not long' $(PYTEST_ARGS)

test-long: $(STAMP)   ## whole-pipeline suites: the README walkthrough, your-own-data shapes, full scale (marker: long)
	scripts/install_test_services.sh
	scripts/install_browser.sh || echo "make test-long: Chromium could not be installed; browser checks will skip"
	$(BIN)/python -m pytest -m long $(PYTEST_ARGS)

bench: $(STAMP)       ## benchmarks (installs the PyTorch CPU and LightGBM peers)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/engine_vs_torch.py

dag: $(STAMP)         ## the pipeline's stages and how they connect (dvc dag)
	$(DVC) dag

status: $(STAMP)      ## which stages are out of date, and why (dvc status)
	$(DVC) status

metrics: $(STAMP)     ## the evaluation's metrics, and how they differ from the last commit (dvc metrics)
	$(DVC) metrics show
	$(DVC) metrics diff

plots: $(STAMP)       ## the evaluation's plots as HTML in dvc_plots/index.html (dvc plots show)
	$(DVC) plots show

sweep: $(STAMP)       ## a run per sweep.grid candidate x backtest window (Dask if set); best gated in sweep/
	$(BIN)/python -m pipeline.sweep

# `make prune PRUNE_ARGS=--dry-run` lists what would go; params.yaml's prune section says how much is kept
PRUNE_ARGS ?=
prune: $(STAMP)       ## delete old model versions, MLflow runs and DVC cache objects; keeps production, rollback, candidate
	$(BIN)/python -m pipeline.prune $(PRUNE_ARGS)

MLFLOW_PORT ?= 5000
# A port in use (another project's or user's MLflow UI on this host) stops the target at once, in one line: mlflow
# itself took a minute to start its server, logged the bind error and exited 0, and the address printed above
# opened the other UI's runs.
# The store's URI is the stages' (pipeline.tracking.ui_store_uri): '?' and '%' in the project's path are escaped
# there; a sqlite store MLFLOW_TRACKING_URI names is served, a server's is not (it has its own UI).
mlflow-ui: $(STAMP)   ## MLflow's web UI on http://127.0.0.1:5000: runs, curves, registered models (Ctrl-C stops it)
	@$(BIN)/python -m app.address 127.0.0.1:$(MLFLOW_PORT) "choose another port: make mlflow-ui MLFLOW_PORT=5001"
	@uri=$$($(BIN)/python -c "from pipeline import tracking; print(tracking.ui_store_uri())") \
	  && MLFLOW_TRACKING_URI="$$uri" $(BIN)/python -c "from pipeline import tracking; print('MLflow UI: open', tracking.ui_address('http://127.0.0.1:$(MLFLOW_PORT)'), '(the model-training view)')" \
	  && set -x && $(BIN)/mlflow ui --backend-store-uri "$$uri" --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

clean:                ## remove .venv and pytest's cache (data, models and MLflow runs stay)
	rm -rf $(VENV) .pytest_cache
