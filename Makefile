# HemaFed: federated blood-cell classification on a Docker Compose stack.
# `make help` lists the targets and options.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# ---- run options (see README) ------------------------------------------------------------
CLIENTS        ?= 3
SPLIT          ?= iid
ALPHA          ?= 0.5
SOURCE_PROPORTIONS ?=
MAPPING        ?=
DATASET        ?= synthetic
ROUNDS         ?= 5
MODEL          ?= cnn
IMAGE_SIZE     ?= 32
LOCAL_EPOCHS   ?= 2
BATCH_SIZE     ?= 32
LEARNING_RATE  ?= 0.001
LR_SCHEDULE    ?= constant
LR_MIN_FRACTION ?= 0
OPTIMIZER      ?= adam
AUGMENT        ?= true
STRATEGY       ?= fedavg
CLASS_WEIGHTING ?= false
LOCAL_NORM     ?= false
MAX_STEPS_PER_EPOCH ?= 0
# CLASSIFIER_ROUNDS=N: the last N of the ROUNDS re-train only the classifier layer (features frozen),
# with their own CLASSIFIER_LEARNING_RATE (0 = LEARNING_RATE), CLASSIFIER_EPOCHS (0 = LOCAL_EPOCHS),
# CLASSIFIER_OPTIMIZER and CLASSIFIER_AUGMENT (empty = OPTIMIZER / AUGMENT)
CLASSIFIER_ROUNDS ?= 0
CLASSIFIER_LEARNING_RATE ?= 0
CLASSIFIER_EPOCHS ?= 0
CLASSIFIER_OPTIMIZER ?=
CLASSIFIER_AUGMENT ?=
# FREEZE_CLASSIFIER=true: FedBABU, the classifier layer stays at its initial weights until the classifier rounds
FREEZE_CLASSIFIER ?= false
# SWA_ROUNDS=K: server-side weight averaging, the global models of the last K rounds before the classifier
# rounds are averaged into the model of the K-th (0 = off)
SWA_ROUNDS     ?= 0
SCHEDULE       ?= full
RECYCLE_FRACTION ?= 0.6
PARTICIPATION  ?= all
DEPARTED       ?= drop
DP_CLIP_NORM   ?= 0
DP_NOISE_MULTIPLIER ?= 0
DP_DELTA       ?= 1e-5
# report: LOCAL_BASELINE=true also has every hospital train a purely local model (local_vs_federated.csv);
# BASELINE_RUN=<RUN_ID of a `make central` run> adds the wall-time reduction against it;
# EPOCHS: epochs of `make central` (0 = ROUNDS x LOCAL_EPOCHS, the federation's budget)
LOCAL_BASELINE ?= false
BASELINE_RUN   ?=
EPOCHS         ?= 0
# TTA=true: the final test report scores the mean over each test image's 8 dihedral views (up and central);
# make central only: LR_WARMUP_EPOCHS (linear warm-up, step by step), EMA_DECAY (weight moving average, 0 = off),
# INIT_RUN=<RUN_ID of a finished run>: start from its final.keras (make central: a warm restart; make up:
# the federation starts there, e.g. CLASSIFIER_ROUNDS=ROUNDS re-trains a finished run's classifier)
TTA            ?= false
# BEST_BY: the global validation figure that picks the best round: median (of the hospitals' accuracies)
# or pooled (all hospitals' validation images together, as a centralized run picks its epoch)
BEST_BY        ?= median
# VAL_SPLIT: how each hospital holds out its validation images: stratified (per class, at least one of
# every class it holds twice) or random (drawn uniformly; for sites of a few dozen images)
VAL_SPLIT      ?= stratified
LR_WARMUP_EPOCHS ?= 0
EMA_DECAY      ?= 0
INIT_RUN       ?=
STRATEGY_PARAMS ?= {}
MIN_CLIENTS    ?= 2
FRACTION_FIT   ?= 1.0
ROUND_TIMEOUT  ?= 600
# reliability (RELIABILITY.md): the wait for MIN_CLIENTS healthy hospitals, the retries of a round
# that got fewer answers; ATTACK/ATTACKER: TEST-ONLY fault injection (the chaos suite), off by default
WAIT_FOR_CLIENTS ?= 300
ROUND_RETRIES  ?= 2
ATTACK         ?= none
ATTACKER       ?= none
ATTACK_SCALE   ?= 10
ATTACK_NOISE_STD ?= 1.0
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
# TLS=on: HTTPS between services + enrolment credentials from CERTS_DIR (`make certs`); TLS=off: plain
# HTTP without credentials, for local debugging only
TLS            ?= on
CERTS_DIR      ?= $(CURDIR)/build/certs

# `docker compose` (v2) when present, else `docker-compose` (v1.29); evaluated when used
COMPOSE = $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; \
            elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; fi)
ALL_PROFILES := --profile h10
PROFILES = $(shell c=$(CLIENTS); [ $$c -gt 3 ] && printf -- '--profile h%s ' $$(( c > 10 ? 10 : c )); \
             [ $$c -gt 10 ] && printf -- '--profile h%s' $$c; true)
HOSPITALS = $(shell for i in $$(seq 1 $(CLIENTS)); do printf 'hospital-%s=$(HEMAFED_SCHEME)://hospital-%s:8000,' $$i $$i; done)
# DATASET: one item or a comma list of items (an item may be NAME=TARGET, see hemafed.data.sources);
# every folder/.npz item is mounted read-only into the split container
comma := ,
empty :=
space := $(empty) $(empty)
DATASET_ITEMS = $(subst $(comma), ,$(DATASET))
ds_target = $(lastword $(subst =, ,$(1)))
ds_is_path = $(if $(filter synthetic% bloodmnist%,$(call ds_target,$(1))),,y)
ds_named = $(findstring =,$(1))
ds_mount = /input/$(if $(call ds_named,$(1)),$(firstword $(subst =, ,$(1)))__)$(notdir $(abspath $(call ds_target,$(1))))
ds_label = $(if $(call ds_named,$(1)),$(firstword $(subst =, ,$(1))),$(if $(call ds_is_path,$(1)),$(notdir $(abspath $(1))),$(1)))
DATASET_VOLUMES = $(foreach i,$(DATASET_ITEMS),$(if $(call ds_is_path,$(i)),-v $(abspath $(call ds_target,$(i))):$(call ds_mount,$(i)):ro))
DATASET_SPEC = $(subst $(space),$(comma),$(strip $(foreach i,$(DATASET_ITEMS),$(if $(call ds_is_path,$(i)),$(if $(call ds_named,$(i)),$(firstword $(subst =, ,$(i)))=)$(call ds_mount,$(i)),$(i)))))
DATASET_LABEL = $(subst $(space),+,$(strip $(foreach i,$(DATASET_ITEMS),$(call ds_label,$(i)))))
BASE_IMAGE_FILE := build/base-image

export CLIENTS SPLIT ROUNDS MODEL IMAGE_SIZE LOCAL_EPOCHS BATCH_SIZE LEARNING_RATE LR_SCHEDULE LR_MIN_FRACTION OPTIMIZER AUGMENT \
       STRATEGY STRATEGY_PARAMS MIN_CLIENTS FRACTION_FIT ROUND_TIMEOUT SEED TF_THREADS METRICS_PORT \
       AGGREGATOR_PORT RUN_ID HEMAFED_TAG DATA_MOUNTS RESULTS_DIR CLASS_WEIGHTING LOCAL_NORM \
       MAX_STEPS_PER_EPOCH SCHEDULE RECYCLE_FRACTION PARTICIPATION DEPARTED DP_CLIP_NORM DP_NOISE_MULTIPLIER DP_DELTA \
       CLASSIFIER_ROUNDS CLASSIFIER_LEARNING_RATE CLASSIFIER_EPOCHS CLASSIFIER_OPTIMIZER CLASSIFIER_AUGMENT \
       FREEZE_CLASSIFIER SWA_ROUNDS
export HOSPITALS DATASET_LABEL CERTS_DIR
export LOCAL_BASELINE BASELINE_RUN EPOCHS TTA BEST_BY VAL_SPLIT LR_WARMUP_EPOCHS EMA_DECAY INIT_RUN
export WAIT_FOR_CLIENTS ROUND_RETRIES ATTACK ATTACKER ATTACK_SCALE ATTACK_NOISE_STD
export HEMAFED_SCHEME = $(if $(filter off,$(TLS)),http,https)
export INSECURE = $(if $(filter off,$(TLS)),true,false)
# every hospital of the compose file (1..10) has its material, more with CLIENTS > 10
CERT_HOSPITALS = $(shell c=$(CLIENTS); echo $$(( c > 10 ? c : 10 )))
export HOST_UID := $(shell id -u)
export HOST_GID := $(shell id -g)
# BASE_IMAGE is the user's choice only (environment or command line; never exported by make, so a
# sub-make cannot mistake a fallback for it); else scripts/base-image.sh picks one into build/base-image.
# Compose builds read the resolved choice as HEMAFED_BASE_IMAGE.
export HEMAFED_BASE_IMAGE = $(shell cat $(BASE_IMAGE_FILE) 2>/dev/null || echo python:3.11-slim)

.PHONY: help up down logs clean data images base-image docker test test-fast test-integration \
        compose-override benchmark status certs experiment chaos central classify

help: ## this help
	@echo "HemaFed make targets:"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'
	@echo
	@echo "Options (make up VAR=value ...):"
	@echo "  CLIENTS=$(CLIENTS)  hospitals (1-10 by compose profiles; more: make compose-override)"
	@echo "  SPLIT=$(SPLIT)  iid | noniid (Dirichlet ALPHA=$(ALPHA)) | source"
	@echo "  DATASET=$(DATASET)  synthetic | /path/to/image-folder | /path/to/bloodmnist.npz | bloodmnist"
	@echo "    several sources: DATASET=pbc=../shared/data/pbc-128,bccd=../shared/data/bccd-crops [SOURCE_PROPORTIONS='1,0;0,1'] [MAPPING=file.yaml]"
	@echo "  ROUNDS=$(ROUNDS) MODEL=$(MODEL) IMAGE_SIZE=$(IMAGE_SIZE) LOCAL_EPOCHS=$(LOCAL_EPOCHS) SEED=$(SEED)"
	@echo "  STRATEGY=$(STRATEGY) STRATEGY_PARAMS='$(STRATEGY_PARAMS)' BATCH_SIZE=$(BATCH_SIZE) LEARNING_RATE=$(LEARNING_RATE)"
	@echo "  LR_SCHEDULE=$(LR_SCHEDULE) constant | cosine (by round; by epoch in make central), down to LR_MIN_FRACTION=$(LR_MIN_FRACTION) x LEARNING_RATE"
	@echo "  OPTIMIZER=$(OPTIMIZER) AUGMENT=$(AUGMENT) MIN_CLIENTS=$(MIN_CLIENTS) FRACTION_FIT=$(FRACTION_FIT)"
	@echo "  ROUND_TIMEOUT=$(ROUND_TIMEOUT) TF_THREADS=$(TF_THREADS) METRICS_PORT=$(METRICS_PORT) BASE_IMAGE=..."
	@echo "  TLS=$(TLS)  on (HTTPS + enrolment tokens from CERTS_DIR=build/certs) | off (plain HTTP, debugging only)"
	@echo "  SCHEDULE=$(SCHEDULE)  full | weekly (Case 1) | weekly-recycle (Case 2, RECYCLE_FRACTION=$(RECYCLE_FRACTION))"
	@echo "  PARTICIPATION=$(PARTICIPATION)  all | random:<p> | schedule:hospital-2=3-5;... ; DEPARTED=$(DEPARTED) (drop|keep)"
	@echo "  DP_CLIP_NORM=$(DP_CLIP_NORM) DP_NOISE_MULTIPLIER=$(DP_NOISE_MULTIPLIER) DP_DELTA=$(DP_DELTA)  hospital DP-SGD"
	@echo "  LOCAL_NORM=$(LOCAL_NORM) (FedBN) CLASS_WEIGHTING=$(CLASS_WEIGHTING) MAX_STEPS_PER_EPOCH=$(MAX_STEPS_PER_EPOCH) CLASSIFIER_ROUNDS=$(CLASSIFIER_ROUNDS)"
	@echo "    classifier rounds' own: CLASSIFIER_LEARNING_RATE=$(CLASSIFIER_LEARNING_RATE) CLASSIFIER_EPOCHS=$(CLASSIFIER_EPOCHS) (0 = the run's) CLASSIFIER_OPTIMIZER=$(CLASSIFIER_OPTIMIZER) CLASSIFIER_AUGMENT=$(CLASSIFIER_AUGMENT) (empty = the run's)"
	@echo "    FREEZE_CLASSIFIER=$(FREEZE_CLASSIFIER) (FedBABU: the classifier stays at its initial weights until the classifier rounds)"
	@echo "    SWA_ROUNDS=$(SWA_ROUNDS) (server-side weight averaging of the last K global models before the classifier rounds; 0 = off)"
	@echo "  LOCAL_BASELINE=$(LOCAL_BASELINE) (hospitals' local models vs federated) BASELINE_RUN=<central run id> EPOCHS=$(EPOCHS) (make central; 0 = ROUNDS x LOCAL_EPOCHS)"
	@echo "  BEST_BY=$(BEST_BY) (the best round by the median of the hospitals' validation accuracies, or pooled: all their validation images together)"
	@echo "  TTA=$(TTA) (test report over 8 dihedral views)  make central only: LR_WARMUP_EPOCHS=$(LR_WARMUP_EPOCHS) EMA_DECAY=$(EMA_DECAY) (weight moving average)"
	@echo "  INIT_RUN=$(INIT_RUN) (start from that finished run's final.keras: make central continues it, make up federates from it)"

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

# what a split depends on; DATA_MOUNTS/.split-args records it, and `make data` skips a split that is
# already there (RESPLIT=1 splits again, e.g. after the dataset folder changed)
SPLIT_ARGS = --dataset '$(DATASET_SPEC)' --clients $(CLIENTS) --split $(SPLIT) \
  $(if $(SOURCE_PROPORTIONS),--source-proportions '$(SOURCE_PROPORTIONS)',) \
  $(if $(MAPPING),--mapping /input-mapping/$(notdir $(MAPPING)),) --alpha $(ALPHA) --seed $(SEED)
SPLIT_KEY = $(subst ',,$(strip $(DATASET_VOLUMES) $(MAPPING) $(SPLIT_ARGS)))

data: images ## write data-mounts/hospital-1..CLIENTS and data-mounts/test from DATASET (kept if unchanged; RESPLIT=1)
	@mkdir -p $(DATA_MOUNTS)
	@key="$(SPLIT_KEY)"; \
	if [ -z "$(RESPLIT)" ] && [ -f "$(DATA_MOUNTS)/manifest.json" ] && \
	   [ "$$(cat "$(DATA_MOUNTS)/.split-args" 2>/dev/null)" = "$$key" ]; then \
	  echo "data: $(DATA_MOUNTS) already holds this split of $(DATASET_LABEL) (RESPLIT=1 splits again)"; \
	else \
	  rm -f "$(DATA_MOUNTS)/.split-args"; \
	  echo "data: splitting $(DATASET_LABEL) for $(CLIENTS) hospitals ($(SPLIT), seed $(SEED)) into $(DATA_MOUNTS)"; \
	  docker run --rm --user $(HOST_UID):$(HOST_GID) -v $(DATA_MOUNTS):/out \
	    $(DATASET_VOLUMES) $(if $(MAPPING),-v $(abspath $(MAPPING)):/input-mapping/$(notdir $(MAPPING)):ro,) \
	    hemafed-hospital:$(HEMAFED_TAG) python -m hemafed.data.split $(SPLIT_ARGS) \
	    --out /out --cache-dir /out/.cache && printf '%s\n' "$$key" > "$(DATA_MOUNTS)/.split-args"; \
	fi

# make certs ROTATE="hospital-2 ...": new tokens, key and certificate for these services (scripts/certs.py)
CERTS_ROTATE = $(if $(strip $(ROTATE)),--rotate $(ROTATE))

certs: ## private CA, a certificate and enrolment tokens per service in CERTS_DIR (existing ones are kept; ROTATE=hospital-2 replaces that service's)
	@if command -v openssl >/dev/null 2>&1; then \
	  $(PYTHON) scripts/certs.py --out $(CERTS_DIR) --hospitals $(CERT_HOSPITALS) $(CERTS_ROTATE); \
	else \
	  mkdir -p $(CERTS_DIR) && docker run --rm --user $(HOST_UID):$(HOST_GID) -v $(CURDIR)/scripts:/scripts:ro \
	    -v $(CERTS_DIR):/out $(HEMAFED_BASE_IMAGE) python3 /scripts/certs.py --out /out --hospitals $(CERT_HOSPITALS) $(CERTS_ROTATE); \
	fi

up: data certs ## split the data, start the stack and follow the run until it ends
	@mkdir -p $(RESULTS_DIR)
	@$(COMPOSE) $(ALL_PROFILES) down --remove-orphans >/dev/null 2>&1 || true
	$(COMPOSE) $(PROFILES) up -d
	@echo "run $(RUN_ID): $(CLIENTS) hospitals, split $(SPLIT), dataset $(DATASET_LABEL), $(ROUNDS) rounds"
	@echo "dashboard: $(HEMAFED_SCHEME)://localhost:$(METRICS_PORT)/?run=$(RUN_ID)  (live; all runs: /runs)"
	@# live view: one line rewritten in place on a terminal, plain lines otherwise; then a summary table
	@t=-T; if [ -t 0 ] && [ -t 1 ]; then t=; fi; \
	$(COMPOSE) exec $$t aggregator python -m hemafed_aggregator.follow --url $(HEMAFED_SCHEME)://127.0.0.1:8080 \
	  --cafile /run/secrets/hemafed/ca.pem --dashboard "$(HEMAFED_SCHEME)://localhost:$(METRICS_PORT)/?run=$(RUN_ID)" \
	  --results "$(RESULTS_DIR)"; rc=$$?; \
	echo; echo "results:   $(RESULTS_DIR)/$(RUN_ID)/ (best.keras, final.keras, test_results.json, run.json)"; \
	echo "metrics:   $(HEMAFED_SCHEME)://localhost:$(METRICS_PORT)/api/runs  (CSV: /api/runs/$(RUN_ID)/rounds.csv)"; \
	$(if $(filter off,$(TLS)),,echo "TLS:       the private CA is $(CERTS_DIR)/ca.pem (curl --cacert; import it in a browser)";) \
	echo "stack stays up for inspection: make logs | make down"; exit $$rc

# RUN_ID defaults to central-<time> for the centralized baseline (a RUN_ID given by the user is kept)
central: RUN_ID := $(if $(filter file,$(origin RUN_ID)),central-$(shell date +%Y%m%d-%H%M%S),$(RUN_ID))
central: data certs ## the centralized baseline: same options as up, pooled hospital data, one container; exits with its outcome
	@mkdir -p $(RESULTS_DIR)
	@echo "run $(RUN_ID): centralized baseline on the pooled data of $(CLIENTS) hospitals, split $(SPLIT), dataset $(DATASET_LABEL), $$(( $(EPOCHS) > 0 ? $(EPOCHS) : $(ROUNDS) * $(LOCAL_EPOCHS) )) epochs"
	@$(COMPOSE) --profile central run --rm -T central; rc=$$?; \
	echo; echo "results:   $(RESULTS_DIR)/$(RUN_ID)/ (best.keras, test_results.json, confusion_matrix.csv/.png, per_class.csv, per_image.csv, run.json)"; \
	echo "compare:   make up <same options> BASELINE_RUN=$(RUN_ID)  (the federated report adds the time reduction)"; \
	exit $$rc

status: ## show the current run's status from the aggregator
	@curl -fsS --cacert $(CERTS_DIR)/ca.pem $(HEMAFED_SCHEME)://127.0.0.1:$(AGGREGATOR_PORT)/api/status \
	  || echo "aggregator not reachable"

# make classify: the CSV goes to OUT (default results/<RUN>/predictions.csv)
CLASSIFY_OUT = $(abspath $(if $(OUT),$(OUT),$(RESULTS_DIR)/$(RUN)/predictions.csv))

classify: ## classify a folder of images with a run's best model: RUN=<run_id> IMAGES=<dir> [OUT=<file.csv>]
	@test -n "$(RUN)" -a -n "$(IMAGES)" || { echo "usage: make classify RUN=<run_id> IMAGES=<dir> [OUT=<file.csv>]" >&2; exit 2; }
	@test -f "$(RESULTS_DIR)/$(RUN)/best.keras" || { echo "no model $(RESULTS_DIR)/$(RUN)/best.keras: RUN is a finished run's id" >&2; exit 2; }
	@test -d "$(IMAGES)" || { echo "no image folder $(IMAGES)" >&2; exit 2; }
	@mkdir -p $(dir $(CLASSIFY_OUT))
	@docker run --rm --network none --user $(HOST_UID):$(HOST_GID) \
	  -v $(abspath $(RESULTS_DIR)/$(RUN)):/model:ro -v $(abspath $(IMAGES)):/images:ro -v $(dir $(CLASSIFY_OUT)):/out \
	  hemafed-aggregator:$(HEMAFED_TAG) python -m hemafed_aggregator.classify \
	  --model /model/best.keras --images /images --out /out/$(notdir $(CLASSIFY_OUT))

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

chaos: ## faults and attackers against the live stack (scripts/chaos.py): results/chaos/chaos.md + .csv
	@.venv/bin/python scripts/chaos.py --tag $(HEMAFED_TAG) $(CHAOS_ARGS)

benchmark: ## run the default stack on ../shared/data/pbc-128 and print figures
	@.venv/bin/python benchmarks/stack_benchmark.py $(if $(BENCH_ARGS),$(BENCH_ARGS),)

experiment: ## run an experiment grid: CONFIG=experiments/<name>.yaml [ONLY=scenario,...] [SEEDS=1,2] [DRY_RUN=1] [ENGINE=simulation]
	@test -n "$(CONFIG)" || { echo "usage: make experiment CONFIG=experiments/<name>.yaml [ONLY=<scenario>,...] [SEEDS=1,2] [DRY_RUN=1]" >&2; exit 2; }
	@$(if $(wildcard .venv/bin/python),.venv/bin/python,$(PYTHON)) -m tools.experiment $(CONFIG) \
	  --results-dir $(RESULTS_DIR) $(if $(ONLY),--only '$(ONLY)',) $(if $(DRY_RUN),--dry-run,) \
	  $(if $(ENGINE),--engine $(ENGINE),) $(if $(SEEDS),--seeds '$(SEEDS)',) $(EXPERIMENT_ARGS)
