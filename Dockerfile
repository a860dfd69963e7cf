# fastws in a container: multi-stage (a compiler only in the build stage), non-root,
# HEALTHCHECK on GET /health. See docs/deployment.md.
#
#   docker build -t fastws .
#   docker run --rm -p 8080:8080 --ulimit nofile=65536:65536 fastws
#
# The default command runs examples/realtime_dashboard.yaml (an endless feed on :8080 with
# the live page). Your own blueprint: mount it and name it,
#   docker run -v "$PWD/system.yaml:/etc/fastws/system.yaml:ro" -p 8080:8080 fastws run /etc/fastws/system.yaml
# The HEALTHCHECK asks port 8080: keep the WebSocket component on it (or set metrics_port
# and change the check).

ARG PYTHON_VERSION=3.12

# -- build: compile fastws' core and collect wheels of it and of its dependencies
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[redis,nats]"

# -- runtime: the wheels only, no compiler, no sources
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 fastws \
    && useradd --system --uid 10001 --gid fastws --no-create-home --shell /usr/sbin/nologin fastws
# only the wheels built above can be installed (--no-index): their versions are pinned by the build
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "fastws[redis,nats]"
COPY examples/ /etc/fastws/examples/
WORKDIR /etc/fastws
ENV PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=2).status != 200)"]
# SIGTERM (docker stop): every client gets CLOSE 1001, then fastws exits 0
STOPSIGNAL SIGTERM
ENTRYPOINT ["fastws"]
CMD ["run", "/etc/fastws/examples/realtime_dashboard.yaml"]
