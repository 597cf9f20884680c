# One image for every process of the pair; docker-compose.yml picks the command per service:
#   python -m keyvault_service | execution_service | provider_emulator | service_kit.devcerts
# The build stage installs the pinned dependencies (requirements/runtime.lock, written by
# `make lock`) and then the project without resolving anything else into a virtual
# environment; `pip check` fails the build if the lock misses a dependency. No extras: the
# embedded PostgreSQL is for development only. The runtime stage copies only that
# environment (no source tree, no build tools) and runs as an unprivileged user. Works with
# BuildKit and with the classic builder alike.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/runtime.lock requirements/
RUN /opt/venv/bin/pip install --no-deps -r requirements/runtime.lock
COPY pyproject.toml ./
COPY clients/ clients/
COPY service_kit/ service_kit/
COPY keyvault_service/ keyvault_service/
COPY execution_service/ execution_service/
COPY provider_emulator/ provider_emulator/
RUN /opt/venv/bin/pip install --no-deps . && /opt/venv/bin/pip check

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CERTS_DIR=/certs
COPY --from=build /opt/venv /opt/venv
# /certs belongs to the service user, so a named volume mounted there starts out writable by
# the certs job and readable (private keys 0600) by the services: all of them run as app.
RUN useradd --system --uid 10001 --user-group --home-dir /app --create-home \
        --shell /usr/sbin/nologin app \
    && install -d -o app -g app -m 0750 /certs
USER app
WORKDIR /app
EXPOSE 50051 50052 9451 9452 8089
CMD ["python", "-m", "keyvault_service"]
