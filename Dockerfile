# syntax=docker/dockerfile:1
# The Jarvis worker image: `docker build -t jarvis .`, then `docker run jarvis worker`
# (docs/operations.md). Two stages: the first builds the Jarvis wheel (with its C trace
# hooks, trace batches and child process calls, jarvis/runtime/_hooks.c, _tracebatch.c
# and _process.c: the only compiled parts; the dependencies all ship wheels) and installs it and its dependencies into a
# virtualenv; the second is a slim Python with only that virtualenv, no compiler, run as
# an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the trace hooks; this stage is thrown away.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY jarvis ./jarvis
# The extensions are optional for `pip install`; here they must be built: the check
# imports them. The virtualenv gets no pip of its own; the build stage's pip installs
# the wheel into it.
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/jarvis \
    && python -m pip --python /opt/jarvis/bin/python install --no-cache-dir --compile \
        /wheels/jarvis-*.whl \
    && /opt/jarvis/bin/python -c "import jarvis.runtime._hooks, jarvis.runtime._tracebatch, jarvis.runtime._process"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="jarvis" \
      org.opencontainers.image.description="Durable, traced, sandboxed execution of SPy programs"
RUN groupadd --system --gid 10001 jarvis \
    && useradd --system --uid 10001 --gid jarvis --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin jarvis \
    && mkdir -p /var/lib/jarvis \
    && chown jarvis:jarvis /var/lib/jarvis
COPY --from=build /opt/jarvis /opt/jarvis
ENV PATH=/opt/jarvis/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JARVIS_STATE_DIR=/var/lib/jarvis
WORKDIR /var/lib/jarvis
USER 10001:10001
# No port: health is `jarvis health`, an exec probe reading the worker's heartbeat.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["jarvis", "health"]
ENTRYPOINT ["jarvis"]
CMD ["worker"]
