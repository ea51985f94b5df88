# HemaFed: federated blood-cell classification on a Docker Compose stack.
# `make help` lists the targets and options.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# ---- run options (see README) ------------------------------------------------------------
CLIENTS        ?= 3
SPLIT          ?= iid
ALPHA          ?= 0.5
DATASET        ?= synthetic
ROUNDS         ?= 5
MODEL          ?= cnn
IMAGE_SIZE     ?= 32
LOCAL_EPOCHS   ?= 2
BATCH_SIZE     ?= 32
LEARNING_RATE  ?= 0.001
OPTIMIZER      ?= adam
AUGMENT        ?= true
STRATEGY       ?= fedavg
STRATEGY_PARAMS ?= {}
MIN_CLIENTS    ?= 2
FRACTION_FIT   ?= 1.0
ROUND_TIMEOUT  ?= 600
SEED           ?= 0
TF_THREADS     ?= 1
METRICS_PORT   ?= 8090
AGGREGATOR_PORT ?= 8080
RUN_ID         ?= run-$(shell date +%Y%m%d-%H%M%S)
HEMAFED_TAG    ?= latest
HOSPITAL       ?=
DATA_MOUNTS    ?= $(CURDIR)/data-mounts
RESULTS_DIR    ?= $(CURDIR)/results
PYTHON         ?= python3

# `docker compose` (v2) when present, else `docker-compose` (v1.29); evaluated when used
COMPOSE = $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; \
            elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; fi)
ALL_PROFILES := --profile h10
PROFILES = $(shell c=$(CLIENTS); [ $$c -gt 3 ] && printf -- '--profile h%s ' $$(( c > 10 ? 10 : c )); \
             [ $$c -gt 10 ] && printf -- '--profile h%s' $$c; true)
HOSPITALS = $(shell for i in $$(seq 1 $(CLIENTS)); do printf 'hospital-%s=http://hospital-%s:8000,' $$i $$i; done)
DATASET_ABS = $(if $(filter synthetic bloodmnist%,$(DATASET)),,$(abspath $(DATASET)))
DATASET_LABEL = $(if $(DATASET_ABS),$(notdir $(DATASET_ABS)),$(DATASET))
BASE_IMAGE_FILE := build/base-image

export CLIENTS SPLIT ROUNDS MODEL IMAGE_SIZE LOCAL_EPOCHS BATCH_SIZE LEARNING_RATE OPTIMIZER AUGMENT \
       STRATEGY STRATEGY_PARAMS MIN_CLIENTS FRACTION_FIT ROUND_TIMEOUT SEED TF_THREADS METRICS_PORT \
       AGGREGATOR_PORT RUN_ID HEMAFED_TAG DATA_MOUNTS RESULTS_DIR
export HOSPITALS DATASET_LABEL
export HOST_UID := $(shell id -u)
export HOST_GID := $(shell id -g)
# BASE_IMAGE is the user's choice only (environment or command line; never exported by make, so a
# sub-make cannot mistake a fallback for it); else scripts/base-image.sh picks one into build/base-image.
# Compose builds read the resolved choice as HEMAFED_BASE_IMAGE.
export HEMAFED_BASE_IMAGE = $(shell cat $(BASE_IMAGE_FILE) 2>/dev/null || echo python:3.11-slim)

.PHONY: help up down logs clean data images base-image docker test test-fast test-integration \
        compose-override benchmark status

help: ## this help
	@echo "HemaFed make targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'
	@echo
	@echo "Options (make up VAR=value ...):"
	@echo "  CLIENTS=$(CLIENTS)  hospitals (1-10 by compose profiles; more: make compose-override)"
	@echo "  SPLIT=$(SPLIT)  iid | noniid (Dirichlet ALPHA=$(ALPHA)) | source"
	@echo "  DATASET=$(DATASET)  synthetic | /path/to/image-folder | /path/to/bloodmnist.npz | bloodmnist"
	@echo "  ROUNDS=$(ROUNDS) MODEL=$(MODEL) IMAGE_SIZE=$(IMAGE_SIZE) LOCAL_EPOCHS=$(LOCAL_EPOCHS) SEED=$(SEED)"
	@echo "  STRATEGY=$(STRATEGY) STRATEGY_PARAMS='$(STRATEGY_PARAMS)' BATCH_SIZE=$(BATCH_SIZE) LEARNING_RATE=$(LEARNING_RATE)"
	@echo "  OPTIMIZER=$(OPTIMIZER) AUGMENT=$(AUGMENT) MIN_CLIENTS=$(MIN_CLIENTS) FRACTION_FIT=$(FRACTION_FIT)"
	@echo "  ROUND_TIMEOUT=$(ROUND_TIMEOUT) TF_THREADS=$(TF_THREADS) METRICS_PORT=$(METRICS_PORT) BASE_IMAGE=..."

docker: ## install and start Docker where it is missing (Debian, root)
	@scripts/ensure-docker.sh

base-image: docker ## pick or build the base image (local debootstrap image when no registry is reachable)
	@mkdir -p build
	@BASE_IMAGE="$(BASE_IMAGE)" scripts/base-image.sh > $(BASE_IMAGE_FILE).tmp && mv $(BASE_IMAGE_FILE).tmp $(BASE_IMAGE_FILE)
	@echo "base image: $$(cat $(BASE_IMAGE_FILE))"

images: base-image ## build the hospital, aggregator and metrics images
	@for svc in metrics hospital aggregator; do \
	  echo "building hemafed-$$svc:$(HEMAFED_TAG) on $$(cat $(BASE_IMAGE_FILE))"; \
	  docker build -q -f images/$$svc.Dockerfile -t hemafed-$$svc:$(HEMAFED_TAG) \
	    --build-arg BASE_IMAGE=$$(cat $(BASE_IMAGE_FILE)) . >/dev/null || exit 1; \
	done

data: images ## write data-mounts/hospital-1..CLIENTS and data-mounts/test from DATASET
	@mkdir -p $(DATA_MOUNTS)
	docker run --rm --user $(HOST_UID):$(HOST_GID) -v $(DATA_MOUNTS):/out \
	  $(if $(DATASET_ABS),-v $(DATASET_ABS):/input/$(DATASET_LABEL):ro,) \
	  hemafed-hospital:$(HEMAFED_TAG) python -m hemafed.data.split \
	  --dataset $(if $(DATASET_ABS),/input/$(DATASET_LABEL),$(DATASET)) --clients $(CLIENTS) --split $(SPLIT) \
	  --alpha $(ALPHA) --seed $(SEED) --out /out --cache-dir /out/.cache

up: data ## split the data, start the stack and follow the run until it ends
	@mkdir -p $(RESULTS_DIR)
	@$(COMPOSE) $(ALL_PROFILES) down --remove-orphans >/dev/null 2>&1 || true
	$(COMPOSE) $(PROFILES) up -d
	@echo "run $(RUN_ID): $(CLIENTS) hospitals, split $(SPLIT), dataset $(DATASET_LABEL), $(ROUNDS) rounds"
	@$(COMPOSE) exec -T aggregator python -m hemafed_aggregator.follow --url http://127.0.0.1:8080; rc=$$?; \
	echo; echo "results:   $(RESULTS_DIR)/$(RUN_ID)/ (best.keras, final.keras, test_results.json, run.json)"; \
	echo "metrics:   http://localhost:$(METRICS_PORT)/api/runs  (CSV: /api/runs/$(RUN_ID)/rounds.csv)"; \
	echo "stack stays up for inspection: make logs | make down"; exit $$rc

status: ## show the current run's status from the aggregator
	@curl -fsS http://127.0.0.1:$(AGGREGATOR_PORT)/api/status || echo "aggregator not reachable"

down: ## stop and remove the stack (all hospitals)
	$(COMPOSE) $(ALL_PROFILES) down --remove-orphans

logs: ## follow the logs (HOSPITAL=k for one hospital)
	$(COMPOSE) $(ALL_PROFILES) logs -f $(if $(HOSPITAL),hospital-$(HOSPITAL),)

clean: ## stop the stack, drop its volumes, data-mounts and results
	-$(COMPOSE) $(ALL_PROFILES) down --remove-orphans -v
	rm -rf $(DATA_MOUNTS)/hospital-* $(DATA_MOUNTS)/test $(DATA_MOUNTS)/manifest.json $(RESULTS_DIR) build

compose-override: ## write docker-compose.override.yml with hospitals 11..CLIENTS
	$(PYTHON) scripts/compose_override.py $(CLIENTS) > docker-compose.override.yml

test: ## the whole test suite: fast tier, then the Docker integration tier (what CI runs)
	@scripts/test.sh

test-fast: ## only the in-process tier (no Docker)
	@scripts/test.sh fast

benchmark: ## run the default stack on ../shared/data/pbc-128 and print figures
	@.venv/bin/python benchmarks/stack_benchmark.py $(if $(BENCH_ARGS),$(BENCH_ARGS),)
