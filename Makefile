# The README's commands. `make run` and `make test` set everything up themselves:
# a venv from requirements.lock, the Fashion-MNIST Debian package when it is missing, then
# `dvc repro` / pytest. NETNS=1 runs the pipeline inside a private network namespace (Ray binds
# every interface; see README "Network namespaces").
VENV     ?= .venv
PYTHON   ?= python3
PY       := $(VENV)/bin/python
# Which torch build (see the header of requirements.lock). cpu: torch==<lock version>+cpu from
# pip's configured sources when they have it (this machine: /opt/wheels), else from PyTorch's
# CPU index. cuda: PyPI's CUDA 13.0 build with requirements-cuda.lock (NVIDIA driver >= 580).
# The venv remembers its choice, so a later `make test` does not swap the build back.
TORCH    ?= $(or $(shell cat $(VENV)/.torch 2>/dev/null),cpu)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION := $(shell sed -n 's/^torch==//p' requirements.lock)
LOCKS    := requirements.lock $(if $(filter cuda,$(TORCH)),requirements-cuda.lock)
$(if $(filter cpu cuda,$(TORCH)),,$(error TORCH must be cpu or cuda, got '$(TORCH)'))
STAMP    := $(VENV)/.installed-$(TORCH)-$(shell cat $(LOCKS) pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)
NETNS    ?= 0
PYTEST_ARGS ?=
UI_PORT  ?= 5000
FAMILY   ?= dcgan
FMNIST   := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

# `unshare -n` as root, `unshare -rn` (user namespace) otherwise; empty when neither works.
NETNS_CMD := $(shell if unshare -n true 2>/dev/null; then echo "unshare -n"; \
                     elif unshare -rn true 2>/dev/null; then echo "unshare -rn"; fi)
IN_NETNS  = $(NETNS_CMD) sh -c 'ip link set lo up && exec "$$0" "$$@"'
ENV_RUN   = env PATH="$(abspath $(VENV))/bin:$$PATH" PYTHONUNBUFFERED=1

.PHONY: help setup data run browser test test-fast lint submit ui compare
help:
	@echo "make setup [TORCH=cuda] create .venv from the locks: CPU torch, or TORCH=cuda for the CUDA 13.0"
	@echo "                     build (NVIDIA driver >= 580); the venv remembers the choice"
	@echo "make run [NETNS=1]   set up and run the whole pipeline (dvc repro)"
	@echo "make test            set up and run the tests (inside a network namespace when possible)"
	@echo "make ui              serve the MLflow UI for this repo's runs on 127.0.0.1:$(UI_PORT)"
	@echo "make compare         key metrics of the workspace and each DVC experiment, one table"
	@echo "make submit          send a train stage to a Ray cluster (RAY_ADDRESS=http://head:8265,"
	@echo "                     FAMILY=dcgan: which zoo family)"

$(STAMP): $(LOCKS) pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(TORCH),cpu)
	$(PY) -m pip install --disable-pip-version-check -q --no-deps "torch==$(TORCH_VERSION)+cpu" 2>/dev/null || \
	  $(PY) -m pip install --disable-pip-version-check -q --no-deps "torch==$(TORCH_VERSION)+cpu" \
	    --index-url $(TORCH_CPU_INDEX)
endif
	$(PY) -m pip install --disable-pip-version-check -q $(addprefix -r ,$(LOCKS))
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*; echo $(TORCH) > $(VENV)/.torch; touch $@

setup: $(STAMP)

# Fashion-MNIST from Debian when it is missing and we can install it; otherwise the fetch stage
# downloads it from the canonical URLs (sha256-checked).
data:
	@if [ ! -f $(FMNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing dataset-fashion-mnist (Debian)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

run: setup data
ifeq ($(NETNS),1)
	@test -n "$(NETNS_CMD)" || { echo "error: NETNS=1 but unshare -n is not permitted here"; exit 1; }
	$(ENV_RUN) $(IN_NETNS) dvc repro
else
	$(ENV_RUN) dvc repro
endif

# Chromium renders the MLflow UI in the UI test; installed where apt is there and we are root.
browser:
	@if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium (Debian) for the UI test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

# pytest exit 5 means "no tests collected": a failure here, never a pass.
test: setup browser
	@$(ENV_RUN) $(if $(NETNS_CMD),$(IN_NETNS)) $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

test-fast: setup
	$(ENV_RUN) $(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check pipeline stages tests benchmarks

# One zoo family's train stage on a Ray cluster; outputs come back into models/$(FAMILY)/ and
# metrics/$(FAMILY)/.
submit: setup
	$(ENV_RUN) $(VENV)/bin/gan-forensics submit $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS)) \
	  --family $(FAMILY)

ui: setup
	@echo "MLflow UI: http://127.0.0.1:$(UI_PORT)/#/experiments?workflowType=machine_learning"
	@# a copied or moved checkout: point the store's artifact locations here first
	@$(PY) -c 'from pathlib import Path; from pipeline.tracking import relocate_store; relocate_store(Path("mlflow.db"))'
	$(VENV)/bin/mlflow server --host 127.0.0.1 --port $(UI_PORT) --workers 1 \
	  --backend-store-uri sqlite:///$(abspath mlflow.db) --artifacts-destination $(abspath mlartifacts)

# `dvc exp show` lists ~30 changed columns for two experiments; this prints the key metrics and
# the params that differ, one row per run (pipeline/compare.py).
compare: setup
	@$(ENV_RUN) $(PY) -m pipeline.compare
