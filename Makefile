# Quick start: `make demo` runs a simulated cluster; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck promtool protos check-protos bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/computewatch demo

test: $(STAMP) promtool
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The alert rules and their unit tests, with Debian's real promtool (the pytest
# suite also runs promtool check metrics on live endpoints and a real Prometheus).
promtool:
	@if command -v promtool >/dev/null 2>&1; then \
	  promtool check rules deploy/prometheus/alerts.yml && \
	  promtool test rules deploy/prometheus/alerts_test.yml; \
	else \
	  echo '********************************************************************' >&2; \
	  echo '* promtool NOT INSTALLED: SKIPPED promtool check/test rules and the *' >&2; \
	  echo '* Prometheus tests. Install it: apt-get install prometheus          *' >&2; \
	  echo '********************************************************************' >&2; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

protos: $(STAMP)
	$(BIN)/python -m protos.generate

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
