# The README's two commands: `make run` and `make test`. Everything else is set up on demand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
BUF    := tools/buf/node_modules/.bin/buf

.PHONY: install proto certs run demo test fuzz lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11 or newer is required") if sys.version_info < (3, 11) else None'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

proto: $(STAMP)  ## regenerate clients/gen from protos/
	$(PY) tools/gen_protos.py

certs: $(STAMP)  ## development CA and workload certificates in certs/
	$(PY) -m service_kit.devcerts --dir certs

run: $(STAMP)  ## both services on the embedded PostgreSQL, in the foreground
	$(PY) -m service_kit.devstack

demo: $(STAMP)  ## emulator + a stored key + one streamed execution + the agent's stats
	$(PY) -m execution_service.demo

test: $(STAMP)
	$(PY) -m pytest

fuzz: $(STAMP)  ## a long property-based campaign over every RPC (tests/fuzz); prints what it tried
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/fuzz --hypothesis-show-statistics --timeout=0

$(BUF): tools/buf/package.json
	cd tools/buf && npm install --silent --no-audit --no-fund
	@touch $(BUF)

lint: $(STAMP) $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy service_kit keyvault_service execution_service provider_emulator clients
	$(BUF) lint
	@if command -v docker-compose >/dev/null; then KEYVAULT_MASTER_KEYS=lint-only docker-compose -f docker-compose.yml config --quiet && echo "docker-compose.yml is valid"; else echo "docker-compose not installed: compose file not validated (Debian: apt-get install docker-compose)"; fi

bench: $(STAMP)  ## throughput and latency figures (not a test)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
