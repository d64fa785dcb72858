# Two entry points for newcomers: `make demo` and `make test`. Both build .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The local test servers; override them, or unset them to skip database tests outside CI.
export RETENTIOND_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
export RETENTIOND_TEST_MYSQL_URL ?= mysql+pymysql://root@127.0.0.1:3306/test

.PHONY: setup demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/retentiond demo

lint: setup
	$(BIN)/ruff check retentiond migrations tests bench
	$(BIN)/ruff format --check retentiond migrations tests bench

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest

test: lint typecheck unit

# Every benchmark at its quick size (each prints its ratios against a baseline from the same run).
bench: setup
	@# Every benchmark runs even when one misses a target; the missed ones are named at the end.
	@missed=""; for script in bench/bench_*.py; do \
		$(BIN)/python $$script --quick || missed="$$missed $$script"; \
	done; \
	if [ -n "$$missed" ]; then echo "targets missed or failed in:$$missed"; exit 1; fi

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
