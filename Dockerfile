# syntax=docker/dockerfile:1
# Shelfcast web app: the production model bundle served by gunicorn.
#   make fetch-model && make build-image     (models/production/ must exist: it is copied in)
# Only the serving dependencies are installed (no pandas, DVC or MLflow); their pins
# match pyproject.toml (tests/monitoring/test_delivery_lint.py checks it).

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir \
        numpy==2.4.6 numba==0.68.1 llvmlite==0.50.0 \
        flask==3.1.3 werkzeug==3.1.9 fluent-logger==0.11.1 msgpack==1.2.4 gunicorn==26.2.0 pyyaml==6.0.3 \
        prometheus_client==0.26.0 threadpoolctl==3.8.0 swagger-ui-bundle==1.1.0
WORKDIR /srv/shelfcast
COPY engine/ engine/
COPY pipeline/ pipeline/
COPY app/ app/
COPY eventlog/ eventlog/
COPY monitoring/ monitoring/
COPY models/production/ models/production/
# Verify the bundle and compile the Numba kernels now, so the container starts warm.
ENV PYTHONPATH=/srv/shelfcast NUMBA_CACHE_DIR=/srv/shelfcast/.numba_cache
RUN /opt/venv/bin/python -c "from pipeline.bundle import load_bundle; load_bundle('models/production')"

FROM python:3.11.11-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 shelfcast \
    && useradd --system --uid 10001 --gid shelfcast --home-dir /srv/shelfcast --shell /usr/sbin/nologin shelfcast
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=shelfcast:shelfcast /srv/shelfcast /srv/shelfcast
WORKDIR /srv/shelfcast
RUN mkdir -p logs && chown shelfcast:shelfcast logs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/srv/shelfcast \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/srv/shelfcast/.numba_cache \
    SHELFCAST_MODEL_DIR=/srv/shelfcast/models/production \
    SHELFCAST_BIND=0.0.0.0:5005
USER 10001:10001
EXPOSE 5005
VOLUME ["/srv/shelfcast/logs"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:5005/readyz', timeout=2).status != 200)"]
CMD ["gunicorn", "--config", "app/gunicorn_conf.py", "app.wsgi:app"]
