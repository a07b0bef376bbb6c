# shop3d cluster image: Ray 2.60 (Python 3.11, CUDA) + the project + baked model weights, for every
# node of cluster.yaml and deploy/kuberay-rayservice.yaml. Replicas start offline: TripoSR from the
# Hugging Face cache in HF_HOME, u2net from U2NET_HOME, pymatting's numba kernels already compiled.
#
#   docker build -t <registry>/shop3d/ray-serve:2.60.0 . && docker push <registry>/shop3d/ray-serve:2.60.0
#
# NOT BUILT in the development environment (no Docker engine there, and no access to the Hugging
# Face hub or GitHub to fetch the weights); tests/test_deploy_config.py checks its order statically.
# The build needs network access to PyPI, download.pytorch.org, huggingface.co and github.com.
# No secret is used or stored here: they reach the containers at run time from the node environment.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

# Headless GL for the poster (EGL with Mesa's llvmpipe; pipeline/assets/poster/gl.py), and node with npm
# for the Khronos glTF validator every QA report runs. Ray's images run as `ray`, which has passwordless sudo.
RUN sudo apt-get update -qq \
    && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        libgl1 libegl1 libegl-mesa0 libgl1-mesa-dri nodejs npm \
    && sudo rm -rf /var/lib/apt/lists/*
# The validator where the installed package finds it without a checkout: `npm root -g`
# (pipeline/assets/validation.py). The version is package.json's, which the tests run.
ARG GLTF_VALIDATOR_VERSION=2.0.0-dev.3.10
RUN sudo npm install -g --no-audit --no-fund "gltf-validator@${GLTF_VALIDATOR_VERSION}"

# torch FIRST, as the CUDA build from PyTorch's own index. pyproject.toml only says torch>=2.4, so a
# bare `pip install .` would take whatever PyPI serves (a different CUDA flavour than the image's,
# several GB). With the pinned wheel installed first, `pip install .` has nothing left to do for
# torch (scripts/setup does the same with the CPU wheel). The wheel bundles its CUDA runtime and
# needs only a recent enough host driver; pick TORCH_CUDA to match the base image's CUDA (the -gpu
# tag aliases Ray's default CUDA build: `ls -d /usr/local/cuda-*` inside the image tells which).
ARG TORCH_VERSION=2.13.0
ARG TORCH_CUDA=cu128
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" \
        --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"

# The project, installed (not editable) so `deployments.app:build` and the autoscaling policy
# import on every node. ray[serve]==2.60.0 in pyproject.toml matches the base image: no reinstall.
# Created by the image's `ray` user first: WORKDIR alone may create it root-owned, and pip builds in it.
RUN mkdir -p /home/ray/shop3d
WORKDIR /home/ray/shop3d
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users pipeline ./pipeline
COPY --chown=ray:users deployments ./deployments
# The `gpu` extra adds NVIDIA Warp, whose marching cubes keep extraction on the GPU ("auto" picks it on CUDA).
RUN pip install --no-cache-dir ".[gpu]" \
    && python -c "import deployments.app, deployments.autoscaling" \
    && cd / && python -c "import trimesh; from pipeline.assets.validation import validate_glb; \
assert validate_glb(trimesh.creation.box().export(file_type='glb')).errors == 0"

# Bake the models where serve_config.yaml's runtime_env points (same paths), through the same
# loading roads the replicas use, so a replica finds exactly what was baked.
ENV HF_HOME=/home/ray/models/hf \
    U2NET_HOME=/home/ray/models/rembg
RUN python -c "from pipeline.model import load_pretrained; load_pretrained('stabilityai/TripoSR')"
# `import rembg` JIT-compiles pymatting's numba kernels (~40 s) into its cache in site-packages;
# doing it here spares every Matting replica that wait. numba keys that cache by CPU model, so
# nodes with a different CPU than the build host compile once more on their first import.
RUN python -c "import rembg" \
    && python -c "from pipeline.intake.matting import BackgroundRemover; BackgroundRemover('u2net')"

# From here on nothing may reach the hub: a missing file is a start-up error, not a slow download.
ENV HF_HUB_OFFLINE=1

# 8000 Serve HTTP, 8265 dashboard, 6379 GCS, 8080 Prometheus metrics (--metrics-export-port).
EXPOSE 8000 8265 6379 8080
