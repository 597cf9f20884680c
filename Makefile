# The README's two commands: `make run` and `make test`. Everything else is set up on demand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
BUF    := tools/buf/node_modules/.bin/buf

.PHONY: install proto certs run demo test fuzz lint lint-compose lint-alerts lint-contracts lint-kubernetes lock bench clean

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

lint: $(STAMP) lint-contracts lint-compose lint-alerts lint-kubernetes
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy service_kit keyvault_service execution_service provider_emulator clients

# A tool the checks below need and the machine lacks: under CI=true that fails the build
# (.ci/run installs them), elsewhere the check is skipped with a line saying so.
MISSING = if [ "$$CI" = true ]; then echo "error: $(1) is required under CI=true ($(2))" >&2; exit 1; fi; echo "$(1) not installed: $(3) skipped ($(2))"; exit 0

lint-compose:  ## docker-compose.yml with each profile, by `docker-compose` or the `docker compose` plugin
	@if command -v docker-compose >/dev/null 2>&1; then compose=docker-compose; \
	elif docker compose version >/dev/null 2>&1; then compose="docker compose"; \
	else $(call MISSING,docker compose,Debian: apt-get install docker-compose,compose file validation); fi; \
	for profile in "" emulator observability; do \
	  KEYVAULT_MASTER_KEYS=lint-only $$compose -f docker-compose.yml $${profile:+--profile $$profile} config --quiet || exit 1; \
	done; echo "docker-compose.yml is valid with every profile ($$compose)"

lint-alerts:  ## Prometheus scrape config and alert rules, and the rules' unit tests
	@command -v promtool >/dev/null 2>&1 || { $(call MISSING,promtool,Debian: apt-get install prometheus,alert rule checks); }; \
	promtool check config --syntax-only deploy/prometheus/prometheus.yml && \
	promtool check rules deploy/prometheus/alerts.yml && \
	promtool test rules deploy/prometheus/alerts_test.yml

lint-kubernetes: $(STAMP)  ## render each Kustomize overlay; validate every object against the Kubernetes schemas
	@command -v kubectl >/dev/null 2>&1 || { $(call MISSING,kubectl,Debian/Ubuntu: apt-get install kubectl from the Kubernetes apt repository,Kubernetes manifest validation); }; \
	$(PY) -m deploy.kubernetes.validate

lint-contracts: $(BUF)  ## buf lint, and buf breaking against the previous commit
	$(BUF) lint
	@if git rev-parse --verify --quiet HEAD~1 >/dev/null 2>&1; then \
	  $(BUF) breaking --against '.git#ref=HEAD~1' && echo "protos: nothing breaking since HEAD~1"; \
	else echo "no previous commit in this clone (a single commit, or shallow): buf breaking skipped"; fi

lock: $(STAMP)  ## requirements/runtime.lock: the image's pinned dependencies, from .venv
	$(PY) deploy/runtime_lock.py

bench: $(STAMP)  ## throughput and latency figures (not a test)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
