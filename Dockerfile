# syntax=docker/dockerfile:1
# latlab images. Targets:
#   project (default): the code + pinned environment, installed as the Makefile installs it
#       docker build -t latlab:cpu .
#       docker build -t latlab:cuda --build-arg TORCH_VARIANT=cu128 .
#   mlflow-server: the MLflow tracking server with its PostgreSQL and S3 clients
#       docker build -t latlab-mlflow:3.17.2 --target mlflow-server .
# The CUDA variant differs only in the torch wheel: PyTorch's CUDA wheels carry the CUDA runtime, and the driver
# comes from the node (NVIDIA container toolkit / GPU operator), so both variants share the slim Python base.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS python-base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin latlab

FROM python-base AS mlflow-server
COPY requirements.lock /tmp/requirements.lock
# -c: every package the lock pins keeps its version; the database and S3 drivers are the server's only extras.
RUN pip install -c /tmp/requirements.lock mlflow==3.17.2 psycopg2-binary==2.9.13 boto3==1.44.5
USER 1000
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]

FROM python-base AS project
# cpu | cu126 | cu128 | cu130: which PyTorch wheel index torch==2.13.0 comes from.
ARG TORCH_VARIANT=cpu
# The DVC remote on the cluster is S3 (MinIO); dvc-s3 is not in the lock, so it is resolved against it (-c).
ARG CLUSTER_EXTRAS="dvc-s3==3.3.0"
# git: DVC and MLflow record the commit when the workspace is a git checkout.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.lock ./
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/${TORCH_VARIANT}
RUN pip install -r requirements.lock
RUN if [ -n "${CLUSTER_EXTRAS}" ]; then pip install -c requirements.lock ${CLUSTER_EXTRAS}; fi
COPY --chown=1000:1000 . .
RUN pip install --no-deps -e . && chown 1000:1000 /app
# The commit the image was built from (.git is not copied): `--build-arg GIT_COMMIT=$(git rev-parse HEAD)`.
ARG GIT_COMMIT=unknown
ENV LATLAB_GIT_COMMIT=${GIT_COMMIT} \
    HF_HOME=/cache/huggingface
USER 1000
# Telemetry off and hub offline for every command, python or not: the project's one list of these switches.
ENTRYPOINT ["sh", "-c", "set -a; . /app/src/latlab/offline.env; set +a; exec \"$@\"", "--"]
CMD ["python", "-m", "flows.pipeline"]
