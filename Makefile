# Ferry's only entry points. `make run` serves ./storage; `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The command-line clients the tests drive for real.
CLIENT_TOOLS := curl wget aria2c strace

.PHONY: run test test-unit lint fmt tools venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.run-installed

venv: $(VENV)/.dev-installed

run: $(VENV)/.run-installed
	$(BIN)/ferry serve

# Installs curl, wget, aria2 and strace from the distribution when any is missing.
tools:
	@missing=""; for t in $(CLIENT_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq curl wget aria2 strace >/dev/null; \
	fi

test: $(VENV)/.dev-installed tools
	$(BIN)/pytest

test-unit: $(VENV)/.dev-installed
	$(BIN)/pytest tests/unit

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check app tests
	$(BIN)/ruff format --check app tests
	$(BIN)/mypy
	@# app/http is pure: no I/O, no framework, no storage.
	@! grep -rnE '^\s*(import|from) (os|asyncio|aiofiles|fastapi|starlette|uvicorn|app\.(storage|transfer|routes|views))\b' app/http \
		|| (echo "app/http must stay pure" && false)
	@# Only the path gate makes a SafePath.
	@! grep -rn 'SafePath(' app --include=*.py | grep -v '^app/storage/paths.py' \
		|| (echo "only app/storage/paths.py may construct SafePath" && false)

fmt: $(VENV)/.dev-installed
	$(BIN)/ruff format app tests
	$(BIN)/ruff check --fix app tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
