# One image for every process of the pair; docker-compose.yml picks the command per service:
#   python -m keyvault_service | execution_service | provider_emulator | service_kit.devcerts
# The build stage pip-installs the project into a virtual environment; the runtime stage
# copies only that environment (no source tree, no build tools) and runs as an unprivileged
# user. Works with BuildKit and with the classic builder alike.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
COPY clients/ clients/
COPY service_kit/ service_kit/
COPY keyvault_service/ keyvault_service/
COPY execution_service/ execution_service/
COPY provider_emulator/ provider_emulator/
RUN /opt/venv/bin/pip install .

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
