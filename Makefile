# The two commands of the README: `make run` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test services lint typecheck unit clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/switchyard serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The integration tests start their own redis-server and PostgreSQL cluster on free loopback
# ports, and the benchmarks drive HTTP load with wrk; this makes sure the binaries are there
# (Debian packages, installed when root).
services:
	@command -v redis-server >/dev/null || sh .ci/apt-install redis-server
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || sh .ci/apt-install postgresql
	@command -v chromium >/dev/null || sh .ci/apt-install chromium
	@command -v wrk >/dev/null || sh .ci/apt-install wrk

test: $(STAMP) services lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -m 'not integration' $(PYTEST_ARGS)

# Side-by-side benchmarks (README, Performance): starts its own redis-server, workers and API
# servers on loopback ports and prints one table. BENCH_ARGS=--quick for a tiny run, --full for
# 100,000 tasks through a worker.
bench: $(STAMP) services
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
