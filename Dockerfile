# Ferry's image: `docker build -t ferry .`, or `docker compose up -d` with docker-compose.yml.
# tests/clients/test_container.py starts Ferry with this file's final-stage ENV, USER, CMD and
# HEALTHCHECK, so keep them plain (exec form, one ENV instruction).

# why: an official slim base pinned by tag; the builder and the final stage share it, so the
# venv's interpreter path (/usr/local/bin/python) is the same in both.
FROM python:3.11-slim AS builder

# why: no pip cache or version check in layers, no bytecode from the build's own python runs.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# why: a venv at a fixed path is what the final stage copies, whole and nothing else.
RUN python -m venv /opt/venv

# why: the build steps below install into the venv, not the system interpreter.
ENV PATH=/opt/venv/bin:$PATH

# why: a scratch directory for the build only; nothing in it reaches the final stage.
WORKDIR /src

# why: the dependencies get their own cached layer that only a pyproject.toml change rebuilds.
COPY pyproject.toml ./

# why: pip installs pyproject's [project] dependencies (tomllib reads them) before any source exists.
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt

# why: the source comes after the dependencies, so an edit rebuilds only the layers from here.
COPY README.md ./
COPY app ./app

# why: Ferry itself as a wheel (not editable); its dependencies are already in the venv.
RUN pip install --no-cache-dir --no-deps .


# why: the same pinned base; no build tools, pip cache or source tree, only the venv.
FROM python:3.11-slim

# why: the repository's URL is known to whoever builds (--build-arg SOURCE_URL=...), not to this file.
ARG SOURCE_URL=""

# why: OCI labels say what the image is, where its source lives and under which licence.
LABEL org.opencontainers.image.title="Ferry" \
      org.opencontainers.image.description="Ferry: a large-file download server that gets HTTP right" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="0.1.0"

# why: a fixed non-root uid/gid (10001) that host directories can be chowned to; its home holds
# the index (outside /data), and /data exists owned by it for named volumes.
RUN groupadd --system --gid 10001 ferry \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/ferry --no-create-home \
        --shell /usr/sbin/nologin ferry \
    && install -d -o 10001 -g 10001 -m 0755 /var/lib/ferry /data

# why: the venv built above, owned by root so the server cannot change its own code.
COPY --from=builder /opt/venv /opt/venv

# why: `ferry` on PATH, unbuffered logs, and the settings that describe the container's layout:
# ROOT is the volume, the index lies outside it, and the server listens on all interfaces.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FERRY_ROOT=/data \
    FERRY_INDEX_PATH=/var/lib/ferry/index.sqlite3 \
    FERRY_HOST=0.0.0.0 \
    FERRY_PORT=8000

# why: a working directory the user owns (./var and config/ferry.env resolve here, not in /).
WORKDIR /var/lib/ferry

# why: never run as root; numeric, so runtimes can verify it is not uid 0 without /etc/passwd.
USER 10001:10001

# why: the files served live outside the image, on a volume or a bind mount.
VOLUME ["/data"]

# why: documents FERRY_PORT; publishing it is the runtime's choice (compose maps 8000:8000).
EXPOSE 8000

# why: `ferry healthcheck` GETs /healthz with the standard library, so the image needs no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["ferry", "healthcheck"]

# why: SIGTERM is what Ferry's graceful shutdown handles (the default, made explicit).
STOPSIGNAL SIGTERM

# why: exec form, so ferry is PID 1 and receives the stop signal itself.
CMD ["ferry", "serve"]
