# fedmm aggregation server: Flower SuperLink + the fedmm ServerApp, started by `fedmm server`.
# Build from the repository root:  docker build -f docker/server.Dockerfile -t fedmm-server .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# The server never trains; the CPU build of torch is enough (it builds the initial model).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# "pretrained" when runs use model.encoders = "pretrained" and the server evaluates a test folder
ARG FEDMM_EXTRAS=""

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

WORKDIR /opt/fedmm
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md ./
COPY common ./common
COPY client ./client
COPY server ./server
COPY simulations ./simulations
COPY fedmm ./fedmm
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".${FEDMM_EXTRAS:+[$FEDMM_EXTRAS]}" \
    && useradd --create-home --uid 10001 fedmm \
    && mkdir -p /state && chown fedmm /state

USER 10001
# The one port hospitals connect to (HTTPS: TLS + node authentication).
EXPOSE 9092
VOLUME ["/state"]
ENTRYPOINT ["fedmm", "server"]
CMD ["--config", "/config/run.toml", "--certs", "/keys", "--out", "/state/run", "--port", "9092"]
