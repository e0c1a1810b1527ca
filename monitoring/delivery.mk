# Delivery targets: every CI step (.github/workflows/*.yml) is one of these, and each runs
# here too. Included by the Makefile (`include monitoring/delivery.mk`).
# Steps that need a Docker engine or a DVC remote say so and do the part that can run.

# this file's folder (make -f another/checkout/monitoring/delivery.mk finds its scripts/ beside it)
DELIVERY_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
BIN ?= .venv/bin
STAMP ?= $(BIN)/../.installed
IMAGE ?= shelfcast-app
# image references must be lowercase (a GitHub owner may not be): what build/publish use
IMAGE_LC = $(shell printf '%s' '$(IMAGE)' | tr '[:upper:]' '[:lower:]')
REGISTRY_LC = $(shell printf '%s' '$(REGISTRY)' | tr '[:upper:]' '[:lower:]')
# The tag names both what the image bakes in: the commit and the model bundle fetch-model left in models/production
# (its digest, as the registry records it: `serving_digest`), so two builds of one commit with different
# @production models never push the same tag. Expanded when build-image/publish-image run, after fetch-model.
IMAGE_COMMIT = $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo local)
IMAGE_MODEL = $(shell $(BIN)/python -c "from pipeline.bundle import verify_bundle; \
  print('-model-' + verify_bundle('models/production')[:12])" 2>/dev/null)
IMAGE_TAG ?= $(IMAGE_COMMIT)$(IMAGE_MODEL)
REGISTRY ?=
DVC := PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc

# Loopback never goes through a proxy. A self-hosted runner behind one (HTTP_PROXY/http_proxy set, NO_PROXY often
# not) sent the release job's requests to the app at SHELFCAST_URL (http://127.0.0.1:5005), to the compose stack's
# Elasticsearch and to a registry on the host through it: urllib and requests bypass a proxy only for the hosts
# NO_PROXY names, loopback included, so `make deploy` said "Connection refused: is the app running there" of an app
# that was serving. Every target here runs with 127.0.0.1, localhost and ::1 added to the runner's own entries, in
# both spellings: urllib and requests read no_proxy before NO_PROXY, so either one alone would hide the other's.
# `*` (no proxy for any host) stays `*` alone: urllib takes it only so.
LOOPBACK_HOSTS := 127.0.0.1 localhost ::1
delivery_comma := ,
delivery_space := $(subst ,, )
delivery_no_proxy := $(sort $(subst $(delivery_comma), ,$(NO_PROXY) $(no_proxy)) $(LOOPBACK_HOSTS))
export NO_PROXY := $(if $(filter *,$(delivery_no_proxy)),*,$(subst $(delivery_space),$(delivery_comma),$(delivery_no_proxy)))
export no_proxy := $(NO_PROXY)

.PHONY: ml-pipeline threshold-test metrics-event promote dvc-push commit-lock fetch-model lint-docker \
        build-image publish-image deploy rollback release-status release-sync release-store-check registry-check \
        compose-up drift \
        monitoring-setup test-monitoring

ml-pipeline: $(STAMP)                 ## dvc repro: download .. evaluate (evaluate's threshold test fails the run)
	$(DVC) repro

threshold-test: $(STAMP)              ## the candidate's verdict, again, from results/evaluation.json
	$(BIN)/python -c "import json,sys; e=json.load(open('results/evaluation.json')); \
	print('threshold test:', 'passed' if e['passed'] else 'FAILED', *e['failures'], sep='\n  '); sys.exit(0 if e['passed'] else 1)"

metrics-event: $(STAMP)               ## validation metrics -> shelfcast.metrics event (Fluentd or logs/monitoring.jsonl)
	$(BIN)/python -m monitoring.metrics_events

promote: $(STAMP)                     ## registry alias + models/production/ (+ dvc push when a remote is set)
	$(BIN)/python -m pipeline.promote

# `dvc remote list` failing (a .dvc/config it cannot read: a merge left conflict markers in it) is not "no remote":
# its output was tested alone, so the step said "nothing to push" and passed, and CI pushed nothing.
# A failed push ends in one line with DVC's reason and what to do (pipeline/dvc_remote.py): DVC's own said
# "unexpected error" for a store it cannot reach, a missing bucket or refused credentials, then its support blurb.
dvc-push: $(STAMP)                    ## push data and models to the DVC remote, when one is configured
	@$(BIN)/python -m pipeline.dvc_remote push

# The versioned record (CD4ML): dvc.lock names the data and model versions the promoted model came from, and the
# metrics files are evaluate's cache: false outputs, tracked by git, whose hashes dvc.lock records (committing one
# without the other leaves `dvc status` reporting them changed). ml-pipeline's `record` job runs this on main after
# promote; only git runs here (no venv). scripts/commit_lock.sh says what it refuses.
LOCK_METRICS ?= results/metrics.json results/evaluation.json results/backtest.json results/slices.json \
                results/plots/daily.csv results/plots/predictions.csv
LOCK_REMOTE ?= origin
LOCK_BRANCH ?= main
commit-lock:                          ## commit dvc.lock + the metrics files to main and push, when dvc.lock changed (main only, nothing else changed)
	@LOCK_REMOTE='$(LOCK_REMOTE)' LOCK_BRANCH='$(LOCK_BRANCH)' $(DELIVERY_DIR)../scripts/commit_lock.sh dvc.lock $(LOCK_METRICS)

# empty: production's alias, params.yaml's promote.alias, into models/production; canary or shadow: models/<alias>
MODEL_ALIAS ?=
MODEL_SOURCE ?= mlflow
fetch-model: $(STAMP)                 ## models:/<params.yaml promote.model_name>@<promote.alias> (MODEL_ALIAS=) from the registry at MLFLOW_TRACKING_URI (MODEL_SOURCE=dvc: the DVC remote)
	@if [ -n "$$MLFLOW_TRACKING_URI" ]; then \
	  $(BIN)/python -m pipeline.registry_fetch $(if $(MODEL_ALIAS),--alias $(MODEL_ALIAS)) --from $(MODEL_SOURCE); \
	else $(BIN)/python -m pipeline.registry_fetch $(if $(MODEL_ALIAS),--alias $(MODEL_ALIAS)) --from local; fi

lint-docker: $(STAMP)                 ## hadolint both Dockerfiles + compose-spec validation of docker-compose.yml
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/monitoring/test_delivery_lint.py

build-image: lint-docker fetch-model  ## docker build (where a Docker engine exists)
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  docker build -t $(IMAGE_LC):$(IMAGE_TAG) . ; \
	else echo "build-image: no Docker engine here; Dockerfile linted, bundle verified, nothing built (tag $(IMAGE_TAG))"; fi

publish-image: build-image            ## docker push $(REGISTRY)/$(IMAGE):$(IMAGE_TAG), lowercased (needs REGISTRY and a login)
	@if [ -z "$(REGISTRY)" ]; then echo "publish-image: REGISTRY not set; nothing published"; \
	elif ! (command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1); then echo "publish-image: no Docker engine; nothing published"; \
	else docker tag $(IMAGE_LC):$(IMAGE_TAG) $(REGISTRY_LC)/$(IMAGE_LC):$(IMAGE_TAG) && docker push $(REGISTRY_LC)/$(IMAGE_LC):$(IMAGE_TAG); fi

# empty counts as unset: GitHub passes an unset repository variable (vars.SHELFCAST_URL) as ""
override SHELFCAST_URL := $(or $(SHELFCAST_URL),http://127.0.0.1:5005)
CANARY_SHARE ?= 0.1
OBSERVE_S ?= 60
SHADOW_S ?= 30
SMOKE_REQUESTS ?= 40
# where the canary check reads the served traffic: the app's JSON-lines log (default), or with
# ELASTICSEARCH_URL (e.g. http://127.0.0.1:9200) the indices the compose stack's Fluentd writes
deploy: $(STAMP)                      ## release the candidate (alias shadow/canary) to the Shelfcast at SHELFCAST_URL: shadow -> canary -> hot reload -> smoke -> check -> promote, or rollback (ELASTICSEARCH_URL=: judge the compose stack's events)
	$(BIN)/python -m pipeline.release deploy --url $(SHELFCAST_URL) --shadow-s $(SHADOW_S) --share $(CANARY_SHARE) \
	  --observe-s $(OBSERVE_S) --requests $(SMOKE_REQUESTS) $(if $(ELASTICSEARCH_URL),--elasticsearch $(ELASTICSEARCH_URL))

rollback: $(STAMP)                    ## production back to the previous production version (from the host's disk: seconds)
	$(BIN)/python -m pipeline.release rollback

release-status: $(STAMP)              ## the registry aliases, the canary share and the releases kept on this host
	$(BIN)/python -m pipeline.release status

release-sync: $(STAMP)                ## install what the aliases name into models/ (a fresh or restarted serving host)
	$(BIN)/python -m pipeline.release sync

# The release job's first step. Its default store, models/ of the runner's checkout, is wiped by actions/checkout
# (git clean -ffdx) before every run, so CI must name the host's store (docker-compose.yml mounts the same); and
# the canary check must read the traffic the serving app logged: its JSON-lines log, which the app writes on the
# host (the default, logs/predictions.jsonl of this checkout, holds nothing and is wiped too), or Elasticsearch.
release-store-check:                  ## fail unless SHELFCAST_MODELS_HOST names a release store outside this checkout and the canary check has the served traffic to read (SHELFCAST_PREDICTION_LOG outside it, or ELASTICSEARCH_URL) (CI)
	@outside() { case "$$(realpath -m -- "$$1")/" in "$$(realpath -m -- "$(CURDIR)")/"*) return 1;; esac; }; \
	store="$$SHELFCAST_MODELS_HOST"; log="$$SHELFCAST_PREDICTION_LOG"; \
	if [ -z "$$store" ]; then \
	  echo "release-store-check: SHELFCAST_MODELS_HOST is not set: set the repository variable to the serving host's release store, outside the runner's checkout (README, CI/CD)" >&2; exit 1; \
	elif ! outside "$$store"; then \
	  echo "release-store-check: SHELFCAST_MODELS_HOST=$$store is inside the runner's checkout, which actions/checkout cleans: name a directory outside it (README, CI/CD)" >&2; exit 1; \
	elif [ -z "$$ELASTICSEARCH_URL" ] && [ -z "$$log" ]; then \
	  echo "release-store-check: neither SHELFCAST_PREDICTION_LOG nor ELASTICSEARCH_URL is set: the canary check would read logs/predictions.jsonl of the runner's checkout, where the serving app logs nothing; set one to where the app logs its predictions (README, CI/CD)" >&2; exit 1; \
	elif [ -z "$$ELASTICSEARCH_URL" ] && ! outside "$$log"; then \
	  echo "release-store-check: SHELFCAST_PREDICTION_LOG=$$log is inside the runner's checkout, which actions/checkout cleans and the serving app does not log to: name the app's log on the host (README, CI/CD)" >&2; exit 1; \
	fi; \
	echo "release-store-check: the host's release store is $$store; the canary check reads $${ELASTICSEARCH_URL:-$$log}"

# The first step of every job that writes or reads the shared registry (ml-pipeline's promote on main, the app
# pipeline's fetch and release). MLFLOW_TRACKING_URI is the only handoff between the two pipelines; GitHub passes an
# unset repository variable as "", which pipeline/tracking.py reads as the checkout's own sqlite store: promote then
# registered the candidate in the runner's mlflow.db, thrown away with the runner, and the ML pipeline passed, while
# the app pipeline failed later at fetch-model with a traceback about a missing local bundle. A local store
# (sqlite:, file:, a bare path) inside the checkout is refused likewise; one outside it (a self-hosted runner's) is
# taken as shared.
registry-check:                       ## fail unless MLFLOW_TRACKING_URI names a shared registry, not a store inside this checkout (CI)
	@uri="$$(printf '%s' "$$MLFLOW_TRACKING_URI" | tr -d '[:space:]')"; path=; \
	case "$$uri" in \
	  sqlite:///*) path="$${uri#sqlite:///}"; path="$${path%%\?*}";; \
	  file://*) path="$${uri#file://}";; \
	  file:*) path="$${uri#file:}";; \
	  *:*|databricks|databricks-uc) ;; \
	  *) path="$$uri";; \
	esac; \
	if [ -z "$$uri" ]; then \
	  echo "registry-check: MLFLOW_TRACKING_URI is not set: set the repository variable to the shared MLflow registry both pipelines use (README, CI/CD); unset, the runner's own store, thrown away with it, would be used" >&2; exit 1; \
	elif [ -n "$$path" ]; then case "$$(realpath -m -- "$$path")/" in "$$(realpath -m -- "$(CURDIR)")/"*) \
	  echo "registry-check: MLFLOW_TRACKING_URI=$$uri is a store inside the runner's checkout, which is thrown away with the runner: name the shared registry (README, CI/CD)" >&2; exit 1;; \
	esac; fi; \
	echo "registry-check: the shared registry is $${uri%%\?*}" | sed -E 's#//[^/@]*@#//#'

compose-up: lint-docker               ## docker compose up (where Docker exists); the stack's files are validated first
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  SHELFCAST_IMAGE_TAG=$(IMAGE_TAG) docker compose up -d --wait ; \
	else echo "compose-up: no Docker engine here; docker-compose.yml validated, nothing started"; fi

drift: $(STAMP)                       ## drift report from the prediction log (non-zero on a drift alarm or an error)
	$(BIN)/python -m monitoring.drift

monitoring-setup: $(STAMP)            ## index templates + Kibana objects into a running stack
	$(BIN)/python -m monitoring.setup_stack

test-monitoring: $(STAMP)             ## the monitoring tests only (tests/monitoring)
	$(BIN)/python -m pytest -q tests/monitoring
