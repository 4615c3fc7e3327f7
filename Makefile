# meshserve: two commands on a fresh machine — `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export MESHSERVE_HOME ?= $(CURDIR)/.meshserve

PACKAGES := gen/python runtime[mlflow] feature_repo training local \
            services/gateway services/features services/preprocess services/model

.PHONY: help install protos train run test test-unit chaos soak clean

help:  ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

install: $(VENV)/.installed  ## create the venv and install everything (pinned)

$(VENV)/.installed: requirements/constraints.txt requirements/dev.txt $(wildcard */pyproject.toml services/*/pyproject.toml gen/python/pyproject.toml)
	@# Checked before the venv exists: a venv of the wrong Python would be kept by later runs.
	@test -x $(PY) || $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "meshserve needs Python 3.11+, and $(PYTHON) is $$($(PYTHON) -V 2>&1); name one: make $(or $(MAKECMDGOALS),install) PYTHON=python3.11" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c requirements/constraints.txt $(foreach p,$(PACKAGES),-e '$(p)') -r requirements/dev.txt
	touch $@

protos: install  ## regenerate gen/python from protos/
	$(PY) tools/gen_protos.py

train: install  ## build the Feast repo, train the demo model, register it as @production
	$(PY) -m meshserve_training train

run: install  ## the whole stack on 127.0.0.1 (trains first if the registry is empty)
	$(PY) -m meshserve_local.stack --train-if-empty

test: install  ## unit + end-to-end tests (real Feast, MLflow, Redis, torch, sklearn)
	$(PY) -m pytest

chaos: install  ## fault scenarios on the real processes; writes bench/RELIABILITY.md
	MESHSERVE_RELIABILITY_REPORT=1 $(PY) -m pytest tests/chaos -m 'chaos and not soak' -v

soak: install  ## 10 min of mixed load: no error, RSS growth bounded (MESHSERVE_SOAK_S=600); bench/RELIABILITY.md
	MESHSERVE_RELIABILITY_REPORT=1 MESHSERVE_SOAK_S=$${MESHSERVE_SOAK_S:-600} $(PY) -m pytest tests/chaos/test_soak.py -m soak -v -rP

test-unit: install
	$(PY) -m pytest tests/unit

clean:  ## remove local state (MLflow db, artifacts, Feast registry)
	rm -rf $(MESHSERVE_HOME)

-include mk/*.mk
