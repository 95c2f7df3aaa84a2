# One-command entry points. Each target creates .venv on demand (see README).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where the embedded PostgreSQL keeps its data (as root it runs as its own user, which must be
# able to traverse this path: keep it outside private trees such as /root).
DATA_DIR ?= var

.PHONY: run demo test soak bench bench-engine bench-durable bench-http bench-ws bench-cycle lint clean

# The core is compiled by mypyc at install (setup.py): a change to it rebuilds.
$(STAMP): pyproject.toml setup.py $(wildcard src/exchange/core/*.py)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/exchange serve --data-dir $(DATA_DIR)

# A day of platform life (engine, gateway and bot processes), in its own directory: never mixes with `make run`.
demo: $(STAMP)
	$(BIN)/exchange demo --data-dir $(DATA_DIR)/demo

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

# Long randomized runs: engine vs reference (1,000,000 commands), 1,000 crash points, long API fuzzing.
soak: $(STAMP)
	$(BIN)/python -m tests.soak --commands 1000000
	$(BIN)/python -m tests.crash_soak --points 1000
	EXCHANGE_FUZZ_EXAMPLES=300 EXCHANGE_FUZZ_SEED=random $(BIN)/pytest -q tests/e2e/test_fuzz.py

bench: bench-engine bench-durable bench-http bench-ws bench-cycle

bench-engine: $(STAMP)
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/engine.py --memory

bench-durable: $(STAMP)
	$(BIN)/python bench/durable.py

bench-http: $(STAMP)
	$(BIN)/python bench/http_load.py --find-max --rate 2600 --step 1.15 --duration 8 --client raw

bench-ws: $(STAMP)
	$(BIN)/python bench/ws_orders.py --sockets 3 --window 256 --duration 6
	$(BIN)/python bench/fanout.py --gateway --find-max --start 1280 --step 1.25 --duration 6

# The daily cycle for 1,000,000 嗨值 holders: engine steps, then the service under 200 orders/s.
bench-cycle: $(STAMP)
	$(BIN)/python bench/cycle.py --holders 1000000 --order-rate 200

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache .schemathesis build
	rm -f src/*.so src/exchange/core/*.so
