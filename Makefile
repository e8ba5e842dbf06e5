# `make demo` and `make test` set themselves up: a .venv with the project and its dev tools.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test quick check lint types pytest browser bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ollama-cloud demo

test: lint types browser pytest

# The edit loop: lint, types and the tests that start no process of their own (about 30 s).
quick: lint types
	HYPOTHESIS_PROFILE=quick $(BIN)/python -m pytest -q -m "not e2e"

check: test

lint: $(STAMP)
	$(BIN)/ruff check orchestrator workers standins tests bench
	$(BIN)/ruff format --check orchestrator workers standins tests bench

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	OLLAMA_CLOUD_TEST_BROWSER=required $(BIN)/python -m pytest -q

# The fleet page's browser test runs the system's Chromium; Debian's package when it is missing.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  echo "installing Debian's chromium for the browser test"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; \
	} || { echo "no chromium: install it (apt-get install chromium) for the browser test"; exit 1; }

bench: $(STAMP)
	$(BIN)/python bench/e2e.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
