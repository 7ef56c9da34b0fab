# One image for the API, the worker and migrations:
#   docker build -t allocation .
#   docker run allocation                                  (the API, port 8000)
#   docker run allocation allocation worker                (the worker)
#   docker run allocation alembic upgrade head             (migrations)

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /venv
# Dependencies first, from pyproject.toml alone: this layer is rebuilt only
# when they change, not with every change to the source.
COPY pyproject.toml README.md ./
RUN mkdir app && touch app/__init__.py \
    && /venv/bin/pip install --no-cache-dir . \
    && /venv/bin/pip uninstall --yes allocation
COPY app ./app
RUN /venv/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 allocation
COPY --from=build /venv /venv
WORKDIR /srv
COPY alembic.ini ./
COPY alembic ./alembic
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
# Behind a reverse proxy, set FORWARDED_ALLOW_IPS to its address (uvicorn
# reads it) so that X-Forwarded-For/-Proto are believed, and ROOT_PATH to the
# path prefix it serves the API under.
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
