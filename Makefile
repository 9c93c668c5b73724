# Maily Secrets. Every target bootstraps what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: help setup demo test bench bench-setup lint services node clean constraints

help:
	@echo "make demo   - start the embedded OpenBao and walk through the integration guide"
	@echo "make test   - start what the tests need and run them (Python and TypeScript, real OpenBao)"
	@echo "make bench  - every benchmark figure against its peers (hvac, async-hvac, aiohttp, node-vault)"
	@echo "make lint   - ruff + mypy"

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is required (PYTHON=$(PYTHON))"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

# The exact versions the repository tests with, after a change of pyproject.toml's ranges:
# upgrade what you mean to in .venv first (pip install -U ...), then freeze it.
constraints:
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -iv '^maily-secrets'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

services:
	bash scripts/ensure-services.sh

# The TypeScript client (@maily/services): npm workspace, built with tsc.
NODE_STAMP := node_modules/.installed-$(shell cat package-lock.json packages/services/package.json | cksum | cut -d' ' -f1)

$(NODE_STAMP): package-lock.json packages/services/package.json
	npm ci --no-audit --no-fund
	rm -f node_modules/.installed-*
	touch $@

node: $(NODE_STAMP)
	npm run build -w @maily/services

demo: $(STAMP)
	$(PY) mailyctl.py dev up
	$(PY) -m maily_secrets.dev.demo

test: $(STAMP) services node
	$(VENV)/bin/pytest

# The bench's own environment: the project (editable, the repository's constraints) plus the
# peers it is measured against (hvac, async-hvac, matplotlib: bench/constraints.txt) in
# bench/.venv, and node-vault in bench/ts/node_modules. Not the project's dependencies.
BENCH_VENV  := bench/.venv
BENCH_PY    := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed-$(shell cat pyproject.toml constraints.txt bench/requirements.txt bench/constraints.txt | cksum | cut -d' ' -f1)
BENCH_TS    := $(wildcard bench/ts/package.json)
BENCH_TS_STAMP := $(if $(BENCH_TS),bench/ts/node_modules/.installed-$(shell cat bench/ts/package.json $(wildcard bench/ts/package-lock.json) | cksum | cut -d' ' -f1))
BENCH_ARGS ?=

$(BENCH_STAMP): pyproject.toml constraints.txt bench/requirements.txt bench/constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is required (PYTHON=$(PYTHON))"; exit 1; }
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --disable-pip-version-check \
		-c constraints.txt -c bench/constraints.txt -e '.[devserver,adapters]' -r bench/requirements.txt
	rm -f $(BENCH_VENV)/.installed-*
	touch $@

ifneq ($(BENCH_TS),)
$(BENCH_TS_STAMP): $(BENCH_TS) $(wildcard bench/ts/package-lock.json)
	cd bench/ts && npm ci --no-audit --no-fund
	rm -f bench/ts/node_modules/.installed-*
	touch $@
endif

bench-setup: $(BENCH_STAMP) $(BENCH_TS_STAMP)

# One driver, one OpenBao, every figure interleaved (bench/run.py: table, results/latest.json,
# results/latest.png); then the figures of earlier issues, each its own script and server.
# `node` builds the TypeScript client that bench/ts measures; `services` starts PostgreSQL
# (the CLI figure rotates a database credential).
bench: bench-setup services node
	@status=0; $(BENCH_PY) bench/run.py $(BENCH_ARGS) || status=1; \
	for s in "bench_listeners.py --quick" "bench_transit.py --quick" bench_sync.py bench_metrics.py; do \
		echo "--- bench/$$s"; $(BENCH_PY) bench/$$s || status=1; \
	done; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check src apps tests bench mailyctl.py
	$(VENV)/bin/mypy

clean:
	-$(PY) mailyctl.py dev down
	rm -rf $(VENV) $(BENCH_VENV) bench/ts/node_modules .maily-dev .pytest_cache .mypy_cache .ruff_cache node_modules packages/services/dist
