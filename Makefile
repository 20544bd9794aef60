# Two commands matter: `make run` (the Docker-free local stack) and `make test` (everything CI runs).
# Both create the virtual environments they need on first use.

SHELL := /bin/bash
# Python 3.13, the functions' runtime: sam build needs python3.13 on PATH, and the venv made from it
# exposes it (pyenv's newest 3.13.x where pyenv has one; tests/template/test_sam.py fails without it).
PYENV_313 := $(shell command -v pyenv >/dev/null 2>&1 && p="$$(pyenv prefix 3.13 2>/dev/null)" && echo "$$p/bin/python")
PYTHON ?= $(shell for p in "$(PYENV_313)" python3.13 python3.12 python3.11 python3; do \
	[ -n "$$p" ] && command -v "$$p" >/dev/null 2>&1 && { command -v "$$p"; break; }; done)
VENV := .venv
SAM_VENV := .tools/sam
SAM_VERSION := 1.170.0
PY := $(VENV)/bin/python
SAM := $(SAM_VENV)/bin/sam
CHECKOV_VENV := .tools/checkov
CHECKOV_VERSION := 3.3.30
CHECKOV := $(CHECKOV_VENV)/bin/checkov
# The scan runs offline: no policy download, no mapping download, no update check.
CHECKOV_ENV := BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=true
export SAM_CLI_TELEMETRY := 0
# sam build looks up python3.13 on PATH; the project venv provides it.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test lint format typecheck validate build bench invoke clean scan openapi debian-packages test-packages

$(VENV)/.installed: requirements-dev.txt layers/shared/requirements*.txt layers/grpc/requirements.txt pyproject.toml
	@test -x "$(PYTHON)" || { echo "no python 3.11+ found (set PYTHON=...)"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@command -v python3.13 >/dev/null 2>&1 || echo "warning: no python3.13 on PATH: sam build (tests/template/test_sam.py) will fail; install Python 3.13 (pyenv install 3.13) and remake $(VENV)" >&2
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@touch $@

# SAM CLI pins boto3 exactly, so it lives in an environment of its own.
$(SAM_VENV)/.installed:
	@[ -x $(SAM_VENV)/bin/python ] || $(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install -q --disable-pip-version-check aws-sam-cli==$(SAM_VERSION)
	@touch $@

# checkov pins packages of its own (boto3 among them) too: an environment of its own as well.
$(CHECKOV_VENV)/.installed:
	@[ -x $(CHECKOV_VENV)/bin/python ] || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q --disable-pip-version-check checkov==$(CHECKOV_VERSION)
	@touch $@

# docker-registry, skopeo, apache2-utils: installed where possible, else the command to run is
# printed and make stops (PREHEAT_SKIP_REAL_REGISTRY=1 opts out, and the tests needing them skip).
debian-packages:
	@.ci/debian-packages

# make test also needs chromium and chromium-driver for the console's browser tests
# (PREHEAT_SKIP_BROWSER=1 opts out).
test-packages:
	@.ci/debian-packages --browser

run: debian-packages $(VENV)/.installed
	$(PY) -m local.stack

test: test-packages $(VENV)/.installed $(SAM_VENV)/.installed $(CHECKOV_VENV)/.installed lint typecheck
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy layers/shared/preheat functions local testing cli/preheat_cli

validate: $(SAM_VENV)/.installed
	$(SAM) validate --lint

build: $(SAM_VENV)/.installed $(VENV)/.installed
	$(SAM) build

# The template's security scan (tests/template/test_security_scan.py runs the same): every finding is
# fixed or skipped in the resource's Metadata (checkov: skip: [{id, comment}]) with the reason.
scan: $(CHECKOV_VENV)/.installed
	$(CHECKOV_ENV) $(CHECKOV) -f template.yaml --framework cloudformation --skip-download --compact

# docs/openapi.yaml is the API's contract; the layer ships it as JSON for GET /api/openapi.json.
openapi: $(VENV)/.installed
	$(PY) -c 'import json, yaml; doc = yaml.safe_load(open("docs/openapi.yaml", encoding="utf-8")); \
	open("layers/shared/preheat/openapi.json", "w", encoding="utf-8").write(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")'

bench: $(VENV)/.installed $(SAM_VENV)/.installed
	$(PY) -m bench

invoke: $(VENV)/.installed
	@test -n "$(FUNCTION)" -a -n "$(EVENT)" || { echo "usage: make invoke FUNCTION=<logical id> EVENT=events/<file>.json"; exit 2; }
	$(PY) -m local.invoke $(FUNCTION) $(EVENT)

clean:
	rm -rf .aws-sam .local .pytest_cache .mypy_cache .ruff_cache
