# The front door. Each target sets up what it needs (a .venv from python3 >= 3.11)
# and does one thing. `make help` lists them.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.DEFAULT_GOAL := help
.PHONY: help run test lint generate check-generated bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "make: Python 3.11 or newer is needed (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)

# One stamp per dependency set; a change to pyproject.toml reinstalls.
$(VENV)/.run: pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	@touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[test]'
	@touch $@ $(VENV)/.run

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[bench]'
	@touch $@ $(VENV)/.run

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev]'
	@touch $@ $(VENV)/.test $(VENV)/.run

node_modules/.bin/protoc-gen-buf-lint: package.json
	@command -v npm >/dev/null || { echo "make lint: npm is needed to install buf (@bufbuild/buf)"; exit 1; }
	npm install --no-audit --no-fund --silent
	@touch $@

run: $(VENV)/.run ## run the whole mesh in the foreground (Ctrl-C stops it)
	$(BIN)/mesh up --dev-key

# One worker per core; a test file runs whole on one worker (its module-scoped meshes start once).
TEST_ARGS ?= -n auto --dist loadfile

test: $(VENV)/.test check-generated ## run every test (unit, in-process, end-to-end; TEST_ARGS=-n0 for one process)
	$(BIN)/python -m pytest $(TEST_ARGS)

check-generated: $(VENV)/.test ## fail if generated/ does not match protos/
	$(BIN)/mesh generate --check

generate: $(VENV)/.test ## regenerate generated/ (modules and typed stubs) from protos/
	$(BIN)/mesh generate

lint: $(VENV)/.dev node_modules/.bin/protoc-gen-buf-lint ## ruff, mypy and buf lint
	$(BIN)/ruff check services tests bench
	$(BIN)/ruff format --check services tests bench
	$(BIN)/mypy services
	$(BIN)/mesh lint-protos --plugin node_modules/.bin/protoc-gen-buf-lint

# The rides' p99 against the offered rate is drawn here (var/ is local data, never committed).
BENCH_PLOT ?= var/bench/trips-p99.png

bench: $(VENV)/.bench ## gRPC calls/s by server model, REST req/s vs grpc-gateway, feature costs, shedding, storage engines, rides on SQLite and PostgreSQL (BENCH_ARGS=--quick)
	@command -v h2load >/dev/null || { echo "make bench: installing h2load (nghttp2-client)"; \
		apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; }
	@command -v taskset >/dev/null || { echo "make bench: installing taskset (util-linux)"; \
		apt-get update -qq && apt-get install -y -qq util-linux >/dev/null; }
	@command -v wrk >/dev/null || { echo "make bench: installing wrk"; \
		apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python -m bench.unary $(BENCH_ARGS)
	$(BIN)/python -m bench.rest $(BENCH_ARGS)
	$(BIN)/python -m bench.client $(BENCH_ARGS)
	$(BIN)/python -m bench.features $(BENCH_ARGS)
	$(BIN)/python -m bench.overload $(BENCH_ARGS)
	$(BIN)/python -m bench.storage $(BENCH_ARGS)
	$(BIN)/python -m bench.trips --plot $(BENCH_PLOT) $(BENCH_ARGS)

clean: ## remove the venv, node_modules and local data (var/)
	rm -rf $(VENV) node_modules var
