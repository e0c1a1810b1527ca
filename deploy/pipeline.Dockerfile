# syntax=docker/dockerfile:1
# Shelfcast pipeline image: every pinned dependency of pyproject.toml (pandas, pyarrow, Dask, MLflow, ...)
# and no code. The dask-scheduler / dask-worker services of docker-compose.yml (profile `cluster`) run it
# with the checkout mounted at the same absolute path as on the host and PYTHONPATH pointing at it, so the
# workers run exactly the code of the `dvc repro` that sends them tasks, and read and write its data/.
#   docker compose --profile cluster build       (context: the repository root, see pipeline.Dockerfile.dockerignore)

FROM python:3.11.11-slim-bookworm
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/shelfcast
COPY pyproject.toml ./
# The pins are read from pyproject.toml's [project] dependencies: one list for the host and the cluster.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -r requirements.txt
RUN groupadd --system --gid 10001 shelfcast \
    && useradd --system --uid 10001 --gid shelfcast --home-dir /tmp --shell /usr/sbin/nologin shelfcast
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba_cache
USER 10001:10001
EXPOSE 8786 8787
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8787/health', timeout=2).status != 200)"]
CMD ["dask", "scheduler", "--port", "8786", "--dashboard-address", ":8787"]
