# One image for the API, the worker and migrations:
#   docker build -t allocation .
#   docker run allocation                                  (the API, port 8000: allocation serve)
#   docker run allocation allocation worker                (the worker)
#   docker run allocation allocation migrate               (migrations)

FROM python:3.11.14-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /venv
# Dependencies first, from the lock alone (make lock writes it from
# pyproject.toml): the same versions in every build, each file checked
# against its hash, and a layer rebuilt only when the lock changes.
COPY requirements.lock ./
RUN /venv/bin/pip install --no-cache-dir --require-hashes -r requirements.lock
# Then the service itself, resolving nothing more: the lock holds its build
# backend too, so nothing unpinned is fetched to build it.
COPY pyproject.toml README.md ./
COPY app ./app
RUN /venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation .

FROM python:3.11.14-slim-bookworm
RUN useradd --create-home --uid 10001 allocation
COPY --from=build /venv /venv
WORKDIR /srv
# The worker's /health, /ready and /metrics on port 9100, reachable from other
# containers; the API's on 8000 (allocation serve).
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    WORKER_HOST=0.0.0.0 \
    WORKER_PORT=9100
USER 10001
EXPOSE 8000
# Healthy while the process the container runs answers: the API, or the worker.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["allocation", "health"]
# The production command: uvicorn with the service's connection limits, in
# WEB_CONCURRENCY processes. Behind a reverse proxy, set FORWARDED_ALLOW_IPS
# to its address so that X-Forwarded-For/-Proto are believed, and ROOT_PATH
# to the path prefix it serves the API under.
CMD ["allocation", "serve", "--host", "0.0.0.0", "--port", "8000"]
