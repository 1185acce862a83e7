# syntax=docker/dockerfile:1
# The largebatch image: Ray + torch + this package + tune_spaces/. One image serves the KubeRay head,
# workers and job submitter, the MLflow tracking server (same mlflow as the clients, plus psycopg), the
# dev bucket Job, and `ray up` clusters.
#
#   CPU: docker build -t largebatch:0.1.0-ray2.60.0-py311 .
#   GPU: docker build --build-arg RAY_IMAGE_SUFFIX=-gpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
#          -t largebatch:0.1.0-ray2.60.0-py311-gpu .
#        (rayproject/ray:<ver>-py311-gpu carries CUDA; PyPI's Linux torch wheels are the CUDA builds)
#
# Tag = <package version>-ray<ray version>-py311[-gpu]; k8s/ and the validator expect exactly that.
# RAY_VERSION and TORCH_VERSION must equal the pins in pyproject.toml (tests/unit/test_dockerfile.py).
ARG RAY_VERSION=2.60.0
# "" for the CPU image, "-gpu" for the CUDA image.
ARG RAY_IMAGE_SUFFIX=

# ---- builder: turn the source tree into a wheel, so the runtime image carries no sources or build tools.
FROM rayproject/ray:${RAY_VERSION}-py311${RAY_IMAGE_SUFFIX} AS builder
WORKDIR /home/ray/build
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 largebatch/ largebatch/
RUN pip wheel --no-deps --no-cache-dir --wheel-dir /home/ray/dist .

# ---- runtime
FROM rayproject/ray:${RAY_VERSION}-py311${RAY_IMAGE_SUFFIX} AS runtime
ARG RAY_VERSION
ARG TORCH_VERSION=2.13.0
# The CPU wheel index keeps the CPU image free of several GB of CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# torch FIRST and pinned: installing the package first would let pip resolve an unpinned torch
# (the CUDA build, several GB) from PyPI.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# Then this package (the wheel from the builder), its dependencies held to the tested versions in
# requirements.lock (a constraints file: it pins what gets installed, installs nothing by itself).
COPY --chown=1000:100 requirements.lock /tmp/requirements.lock
COPY --from=builder --chown=1000:100 /home/ray/dist/ /tmp/dist/
# mlflow[auth] adds Flask-WTF (pinned in requirements.lock), without which `mlflow server --app-name=basic-auth`
# (k8s/base/mlflow.yaml) refuses to start. The package brings psycopg 3 (pinned), the driver SQLAlchemy 2.1 uses for
# `postgresql://` stores (psycopg2 alone fails there: "No module named 'psycopg'").
RUN pip install --no-cache-dir --constraint /tmp/requirements.lock /tmp/dist/*.whl "mlflow[auth]" \
 && rm -rf /tmp/dist /tmp/requirements.lock \
 && python -c "import largebatch, ray, torch; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"

# The RayJob uses this directory as its working_dir, so `largebatch tune tune_spaces/X.yaml` resolves.
WORKDIR /home/ray/app
COPY --chown=1000:100 tune_spaces/ tune_spaces/

# Non-root: the base image's `ray` user (uid 1000, gid 100), numeric so that Kubernetes'
# runAsNonRoot can verify it. pip above already ran as this user (the base image's default).
USER 1000:100
