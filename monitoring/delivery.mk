# Delivery targets: every CI step (.github/workflows/*.yml) is one of these, and each runs
# here too. Included by the Makefile (`include monitoring/delivery.mk`).
# Steps that need a Docker engine or a DVC remote say so and do the part that can run.

BIN ?= .venv/bin
STAMP ?= $(BIN)/../.installed
IMAGE ?= shelfcast-app
IMAGE_TAG ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo local)
REGISTRY ?=
DVC := PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc

.PHONY: ml-pipeline threshold-test metrics-event promote dvc-push fetch-model lint-docker \
        build-image publish-image deploy drift monitoring-setup test-monitoring

ml-pipeline: $(STAMP)                 ## dvc repro: download .. evaluate (evaluate's threshold test fails the run)
	$(DVC) repro

threshold-test: $(STAMP)              ## the candidate's verdict, again, from results/evaluation.json
	$(BIN)/python -c "import json,sys; e=json.load(open('results/evaluation.json')); \
	print('threshold test:', 'passed' if e['passed'] else 'FAILED', *e['failures'], sep='\n  '); sys.exit(0 if e['passed'] else 1)"

metrics-event: $(STAMP)               ## validation metrics -> shelfcast.metrics event (Fluentd or logs/monitoring.jsonl)
	$(BIN)/python -m monitoring.metrics_events

promote: $(STAMP)                     ## registry alias + models/production/ (+ dvc push when a remote is set)
	$(BIN)/python -m pipeline.promote

dvc-push: $(STAMP)                    ## push data and models to the DVC remote, when one is configured
	@if [ -n "$$($(DVC) remote list)" ]; then $(DVC) push; else echo "dvc-push: no DVC remote configured; nothing to push"; fi

MODEL_ALIAS ?= production
MODEL_SOURCE ?= mlflow
fetch-model: $(STAMP)                 ## models:/shelfcast-forecaster@production (MODEL_ALIAS=) from the registry at MLFLOW_TRACKING_URI (MODEL_SOURCE=dvc: the DVC remote)
	@if [ -n "$$MLFLOW_TRACKING_URI" ]; then \
	  $(BIN)/python -m pipeline.registry_fetch --alias $(MODEL_ALIAS) --to models/$(MODEL_ALIAS) --from $(MODEL_SOURCE); \
	else $(BIN)/python -c "from pipeline.bundle import verify_bundle; print('fetch-model: no MLFLOW_TRACKING_URI; local models/production', verify_bundle('models/production')[:12])"; fi

lint-docker: $(STAMP)                 ## hadolint both Dockerfiles + compose-spec validation of docker-compose.yml
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/monitoring/test_delivery_lint.py

build-image: lint-docker fetch-model  ## docker build (where a Docker engine exists)
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  docker build -t $(IMAGE):$(IMAGE_TAG) . ; \
	else echo "build-image: no Docker engine here; Dockerfile linted, bundle verified, nothing built"; fi

publish-image: build-image            ## docker push $(REGISTRY)/$(IMAGE):$(IMAGE_TAG) (needs REGISTRY and a login)
	@if [ -z "$(REGISTRY)" ]; then echo "publish-image: REGISTRY not set; nothing published"; \
	elif ! command -v docker >/dev/null 2>&1; then echo "publish-image: no Docker engine; nothing published"; \
	else docker tag $(IMAGE):$(IMAGE_TAG) $(REGISTRY)/$(IMAGE):$(IMAGE_TAG) && docker push $(REGISTRY)/$(IMAGE):$(IMAGE_TAG); fi

deploy: lint-docker                   ## docker compose up (where Docker exists); the stack's files are validated first
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  SHELFCAST_IMAGE_TAG=$(IMAGE_TAG) docker compose up -d --wait ; \
	else echo "deploy: no Docker engine here; docker-compose.yml validated, nothing started"; fi

drift: $(STAMP)                       ## drift report from logs/predictions.jsonl (exit 1 on a drift alarm)
	$(BIN)/python -m monitoring.drift

monitoring-setup: $(STAMP)            ## index templates + Kibana objects into a running stack
	$(BIN)/python -m monitoring.setup_stack

test-monitoring: $(STAMP)             ## the monitoring tests only (tests/monitoring)
	$(BIN)/python -m pytest -q tests/monitoring
