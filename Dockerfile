# mboxii-dlr: receiver and read API for MboxII delivery reports.
#
#   docker build -t mboxii-dlr .
#   docker build --build-arg BASE_IMAGE=localhost/mboxii-dlr-base:bookworm -t mboxii-dlr .
#
# BASE_IMAGE is any image with python3 (3.11+) and its venv module: the official
# python:3.12-slim, or a plain Debian with python3 and python3-venv. Builder and runtime use
# the same base, so the virtualenv copied between them finds the same interpreter.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
# Build-time only and never stored in the image: a package index mirror, and the CA bundle
# of a TLS-inspecting proxy (mount it with -v and pass its path).
ARG PIP_INDEX_URL
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/mboxii-dlr
# The dependencies first, from pyproject.toml alone, so a code change reuses this layer.
COPY pyproject.toml README.md ./
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
    && /opt/mboxii-dlr/bin/pip wheel --wheel-dir /wheels --requirement requirements.txt
COPY app ./app
COPY simulator ./simulator
COPY migrations ./migrations
RUN /opt/mboxii-dlr/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/mboxii-dlr/bin/pip install --no-index --find-links /wheels mboxii-dlr \
    && /opt/mboxii-dlr/bin/pip uninstall --yes pip setuptools wheel \
    && /opt/mboxii-dlr/bin/mboxii-dlr --help > /dev/null

FROM ${BASE_IMAGE} AS runtime
LABEL org.opencontainers.image.title="mboxii-dlr" \
      org.opencontainers.image.description="Receiver and read API for MboxII SMS delivery reports" \
      org.opencontainers.image.licenses="MIT"
# A fixed numeric id, so Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --gid 10001 dlr \
    && useradd --no-log-init --uid 10001 --gid dlr --home-dir /var/lib/mboxii-dlr \
       --no-create-home --shell /usr/sbin/nologin dlr \
    && mkdir -p /var/lib/mboxii-dlr \
    && chown dlr:dlr /var/lib/mboxii-dlr
COPY --from=build /opt/mboxii-dlr /opt/mboxii-dlr
ENV PATH=/opt/mboxii-dlr/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DLR_ENV=production \
    DLR_HOST=0.0.0.0 \
    DLR_PORT=8000 \
    DLR_WORKERS=1 \
    DLR_LOG_FORMAT=json
# SQLite (the default database URL) lands in ./data here; use PostgreSQL for anything shared.
WORKDIR /var/lib/mboxii-dlr
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/mboxii-dlr/bin/mboxii-dlr", "healthcheck"]
ENTRYPOINT ["/opt/mboxii-dlr/bin/mboxii-dlr"]
CMD ["serve"]
