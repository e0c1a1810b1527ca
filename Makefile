# Shelfcast — every step a user or CI takes is a target here.
# `make run`  : set up and run the pipeline on embedded defaults.
# `make test` : set up and run the test suite (what .ci/run calls).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

export NUMBA_CACHE_DIR ?= $(HOME)/.cache/shelfcast/numba
export PIP_DISABLE_PIP_VERSION_CHECK = 1
export DVC_NO_ANALYTICS = 1

.DEFAULT_GOAL := help

# CI/CD steps (ml-pipeline, promote, build-image, deploy, drift ...): one make target each.
include monitoring/delivery.mk

.PHONY: venv run serve test test-slow bench clean help

help:
	@echo "make run        set up, run the pipeline (dvc repro), promote the model, serve the app on :5005"
	@echo "make serve      serve models/production with gunicorn on http://localhost:5005"
	@echo "make test       set up, then run the default test suite"
	@echo "make test-slow  the long suites (marker: slow)"
	@echo "make bench      benchmarks (installs the PyTorch CPU peer)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -c "import engine, numba, pandas, mlflow, dvc"
	touch $(STAMP)

run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	$(BIN)/python -m pipeline.promote
	$(MAKE) serve

serve: $(STAMP)
	$(BIN)/gunicorn --config app/gunicorn_conf.py app.wsgi:app

test: $(STAMP)
	scripts/install_test_services.sh
	scripts/install_browser.sh || echo "make test: Chromium could not be installed; the browser test will skip"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	scripts/install_test_services.sh
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/engine_vs_torch.py

clean:
	rm -rf $(VENV) .pytest_cache
