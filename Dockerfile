# The tenant-worker image: Celery worker (and optionally Flower, or the task and run API) as a non-root user under
# tini.
# Build with `make image` (scripts/build-image.sh); documentation: docs/container.md.
#
# PYTHON_IMAGE selects the base. Any Debian-based image with `python3` and `python3-venv` works
# (python:3.12-slim, or the debootstrap base made by scripts/build-base-image.sh where no registry answers).
ARG PYTHON_IMAGE=python:3.12-slim

# ---------------------------------------------------------------------------------------------------
# build: a virtualenv under /opt/venv with the pinned dependencies, then the project itself.
# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

SHELL ["/bin/bash", "-o", "pipefail", "-euc"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python3 -m venv /opt/venv
WORKDIR /src

# Dependencies first (their own layer, reused until pyproject.toml or constraints.txt change): the project's and
# its `api` extra (FastAPI, uvicorn), so that `entrypoint.sh api` serves the task and run API (docs/api.md).
# The optional `cacert` secret is a CA bundle for pip behind a TLS-intercepting proxy; it is mounted
# only for this step and never stored in a layer.
COPY pyproject.toml constraints.txt ./
RUN --mount=type=secret,id=cacert,required=false \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["api"]))' \
        > requirements.txt; \
    /opt/venv/bin/python -m pip install --quiet --constraint constraints.txt --requirement requirements.txt

# The project (config/ and worker/), installed as a regular (non-editable) package. pip is not needed at run
# time, nor are the test suites (with their test keys) that some dependencies ship.
COPY README.md ./
COPY config ./config
COPY worker ./worker
RUN --mount=type=secret,id=cacert,required=false \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    /opt/venv/bin/python -m pip install --quiet --no-deps . \
    && /opt/venv/bin/python -m pip uninstall --quiet --yes pip setuptools \
    && find /opt/venv -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} +

# ---------------------------------------------------------------------------------------------------
# runtime: the base image, tini, the virtualenv and the entrypoint. Nothing here is writable by the
# worker user; it writes only to /tmp (heartbeat, ready marker), so `--read-only` with a tmpfs /tmp works.
# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

SHELL ["/bin/bash", "-o", "pipefail", "-euc"]

# tini is PID 1: it reaps zombies and forwards signals to its one child (the entrypoint, or the process it
# exec'd). Unpinned on purpose: the version comes from the base image's Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin worker \
    && install -d -o root -g root -m 0755 /app

COPY --from=build /opt/venv /opt/venv
COPY --chmod=0755 entrypoint.sh /usr/local/bin/entrypoint.sh

# Only what the image must set differently from a plain environment; every product setting keeps the default
# declared once in config/options.py (see the README table).
#   PATH                     the virtualenv first: `celery` and `python3` by name (the launcher execs celery from PATH)
#   HOME=/tmp                the user has no home; libraries that write under ~ get the one writable place
#   PYTHONUNBUFFERED         log lines reach `docker logs` at once, not when a buffer fills
#   PYTHONDONTWRITEBYTECODE  the code is compiled at build time; nothing may write beside it (read-only image)
#   CELERY_APP               Celery's own variable, for commands run as given (`entrypoint.sh celery inspect ping`)
#   API_HOST                 `entrypoint.sh api` listens on every address of the container (loopback by default)
ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CELERY_APP=worker.app \
    API_HOST=0.0.0.0

WORKDIR /app
USER 10001:10001
EXPOSE 5555 8000
STOPSIGNAL SIGTERM

# Cheap: the age of the heartbeat file (stdlib and config's declarations, about 0.1 s); it never imports Celery
# and never talks to the broker.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python3", "-m", "worker", "healthcheck"]

# Last, so that a new revision or date does not invalidate the layers above.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="tenant-worker" \
      org.opencontainers.image.description="Multi-tenant Celery worker on Redis with PostgreSQL row-level security (optional Flower)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Proprietary" \
      org.opencontainers.image.documentation="docs/container.md"

ENTRYPOINT ["tini", "--", "/usr/local/bin/entrypoint.sh"]
CMD ["worker"]
