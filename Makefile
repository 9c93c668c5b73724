# Maily Secrets. Every target bootstraps what it needs on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: help setup demo test bench lint services node clean constraints

help:
	@echo "make demo   - start the embedded OpenBao and walk through the integration guide"
	@echo "make test   - start what the tests need and run them (Python and TypeScript, real OpenBao)"
	@echo "make bench  - benchmarks against hvac and raw aiohttp on the same server"
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

bench: $(STAMP)
	$(PY) bench/run.py
	$(PY) bench/bench_listeners.py
	$(PY) bench/bench_transit.py
	$(PY) bench/bench_rotation.py
	$(PY) bench/bench_sync.py
	$(PY) bench/bench_metrics.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src apps tests bench mailyctl.py
	$(VENV)/bin/mypy

clean:
	-$(PY) mailyctl.py dev down
	rm -rf $(VENV) .maily-dev .pytest_cache .mypy_cache .ruff_cache node_modules packages/services/dist
