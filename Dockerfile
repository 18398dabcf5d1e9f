# raydd runtime image for KubeRay (k8s/) and any other Ray node.
#   docker build -t ghcr.io/example/raydd:2.60.0 .
# Keep the tag starting with the Ray version below: rayVersion in k8s/ must match it.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# wget: KubeRay's readiness/liveness probes run it inside the Ray containers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*

# Pinned runtime stack, in its own layer so source edits do not reinstall it.
RUN pip install \
        "torch==2.14.1" \
        "torchvision==0.29.1" \
        "ray[default,train,tune]==2.60.0" \
        "pyarrow==26.0.1" \
        "s3fs==2026.9.0" \
        "fsspec==2026.9.0" \
        "aiobotocore==3.10.0" \
        "boto3==1.43.117" \
        "botocore==1.43.117" \
        "hydra-core==1.3.8"

# pip keeps the pins above: it only changes an installed dependency that does not fit.
COPY . /tmp/raydd-src
RUN pip install /tmp/raydd-src \
    && pip check \
    && rm -rf /tmp/raydd-src

RUN useradd --uid 1000 --user-group --create-home --shell /bin/bash raydd

# The Hydra configs are package data (raydd/configs). A job submitted with `ray job submit
# --working-dir .` runs its uploaded checkout's raydd, configs included; RAYDD_CONFIG_DIR names another copy.
USER 1000:1000
WORKDIR /opt/raydd
