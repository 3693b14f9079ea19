# syntax=docker/dockerfile:1.7
#
# RunPod serverless worker: A1111 v1.10.1 (or Forge, for Flux) + the RunPod handler.
#
#   docker build -t sd-worker .                                   # A1111 v1.10.1
#   docker build -t sd-worker-forge --build-arg WEBUI_BACKEND=forge .
#   docker build -t sd-worker-cu128 --build-arg TORCH_CUDA=cu128 .  # torch 2.8 for CUDA 12.8: Blackwell too
#   docker build -t sd-worker-baked --build-arg BAKE_MODELS=1 \
#       --secret id=hf_token,env=HF_TOKEN --secret id=civitai_token,env=CIVITAI_TOKEN .
#
# Only code lives in the image; models live on the network volume (/runpod-volume/models),
# except with BAKE_MODELS=1, which downloads the catalog's default models into
# /opt/worker/models (used when no volume is attached, see README). Tokens are passed as
# BuildKit secrets and never end up in a layer.
#
# Two Python environments, on purpose: A1111 pins fastapi 0.94 / pydantic 1 (Forge:
# fastapi 0.104 / pydantic 2), while the runpod SDK and our handler need far newer ones.
#   /opt/venv-webui   Python 3.10 (Ubuntu 22.04's), A1111 + its extensions
#   /opt/venv-worker  Python 3.11 (installed by uv), requirements.txt
#
# The webui venv is installed from a complete lock (image/<backend>-<cuda>.lock, checked against
# the package registry in CI by image/lock.py), so the launcher's prepare_environment finds
# everything in place and a rebuild gets the same packages (docs/image.md).
#
# Each ARG is declared in the step that uses it, so changing one (BAKE_MODELS, say) rebuilds
# only from there on.

# Plain Ubuntu, not an nvidia/cuda image: the torch wheels bring their own CUDA libraries
# (nvidia-* packages), the driver comes from the host through the NVIDIA container runtime.
ARG BASE_IMAGE=ubuntu:22.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.5.11

FROM ${UV_IMAGE} AS uv

FROM ${BASE_IMAGE}

# a1111 | forge
ARG WEBUI_BACKEND=a1111

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_INSTALL_DIR=/opt/uv-python \
    UV_NO_CACHE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    WEBUI_BACKEND=${WEBUI_BACKEND} \
    WEBUI_DIR=/opt/webui \
    WEBUI_PYTHON=/opt/venv-webui/bin/python \
    HANDLER_PYTHON=/opt/venv-worker/bin/python \
    WORKER_DIR=/opt/worker

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Versions of Ubuntu packages are not pinned: the archive drops old versions, so pins
# break rebuilds; the base image tag fixes the release (see .hadolint.yaml).
# libgoogle-perftools4: tcmalloc, which start.sh preloads for A1111.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates git python3.10 python3.10-venv \
        libgl1 libglib2.0-0 libgoogle-perftools4 \
    && rm -rf /var/lib/apt/lists/*

COPY --from=uv /uv /usr/local/bin/uv

# --- A1111 / Forge source at a pinned commit ----------------------------------------------
# AUTOMATIC1111 v1.10.1 (the tag is fetched too, and checked to point at this commit).
ARG A1111_REPO=https://github.com/AUTOMATIC1111/stable-diffusion-webui.git
ARG A1111_TAG=v1.10.1
ARG A1111_COMMIT=82a973c04367123ae98bd9abdf80d9eda9b910e2
# Forge main as recorded in tests/recordings/forge/INDEX.md (2025-06-26).
ARG FORGE_REPO=https://github.com/lllyasviel/stable-diffusion-webui-forge.git
ARG FORGE_COMMIT=dfdcbab685e57677014f05a3309b48cc87383167
RUN if [ "$WEBUI_BACKEND" = forge ]; then repo="$FORGE_REPO"; commit="$FORGE_COMMIT"; \
    elif [ "$WEBUI_BACKEND" = a1111 ]; then repo="$A1111_REPO"; commit="$A1111_COMMIT"; \
    else echo "WEBUI_BACKEND must be a1111 or forge, got $WEBUI_BACKEND" >&2; exit 1; fi \
    && git init -q "$WEBUI_DIR" \
    && git -C "$WEBUI_DIR" remote add origin "$repo" \
    && git -C "$WEBUI_DIR" fetch -q --depth 1 origin "$commit" \
    && git -C "$WEBUI_DIR" checkout -q FETCH_HEAD \
    && if [ "$WEBUI_BACKEND" = a1111 ]; then \
        git -C "$WEBUI_DIR" fetch -q --depth 1 origin "refs/tags/$A1111_TAG:refs/tags/$A1111_TAG" \
        && test "$(git -C "$WEBUI_DIR" rev-parse "$A1111_TAG^{commit}")" = "$commit"; \
    fi

WORKDIR /opt/webui

# --- the webui venv: the lock, then the launcher, which must find nothing to install --------
# cu121: torch 2.1.2 (A1111) / 2.3.1 (Forge), the launchers' own defaults, Turing to Hopper.
# cu128: torch 2.8.0 + xformers 0.0.32.post2, CUDA 12.8, which Blackwell (RTX 50xx, B200) needs;
# the host driver must support CUDA 12.8 (driver 570 or newer). Both are PyPI's default builds.
ARG TORCH_CUDA=cu121
COPY image/ /opt/image/
# --no-deps: the lock is the whole environment (CI checks it resolves and is complete); pip
# check proves its pins agree once installed.
RUN lock="/opt/image/${WEBUI_BACKEND}-${TORCH_CUDA}.lock" \
    && if [ ! -f "$lock" ]; then \
        echo "no lock $lock: WEBUI_BACKEND must be a1111 or forge, TORCH_CUDA cu121 or cu128" >&2; exit 1; \
    fi \
    && python3.10 -m venv /opt/venv-webui \
    && "$WEBUI_PYTHON" -m pip install --quiet --no-deps -r "$lock" \
    && "$WEBUI_PYTHON" -m pip check \
    && ln -s "$lock" /opt/webui-lock.txt

# From here on every pip (and uv) install, the launcher's and the extensions' installers', is
# held to the lock: one that would change a locked version fails instead.
ENV PIP_CONSTRAINT=/opt/webui-lock.txt \
    UV_CONSTRAINT=/opt/webui-lock.txt

# `launch.py --exit` runs prepare_environment (torch, CLIP, open_clip, xformers: all found
# installed, so skipped; the pinned repositories/ are cloned; requirements: REQS_FILE points it
# at the lock, already met) and exits; start.sh later passes --skip-prepare-environment so a
# worker never pip-installs or git-clones at start-up.
# Stability-AI/stablediffusion, which A1111 v1.10.1 clones, was deleted from GitHub in
# Dec 2025 (AUTOMATIC1111/stable-diffusion-webui#17213); this maintainer mirror holds the
# same pinned commit (cf1d67a6), which the launcher still checks out.
ARG STABLE_DIFFUSION_REPO=https://github.com/w-e-w/stablediffusion.git
RUN XFORMERS_PACKAGE="$(grep '^xformers==' /opt/webui-lock.txt)" \
    && export STABLE_DIFFUSION_REPO XFORMERS_PACKAGE REQS_FILE=/opt/webui-lock.txt \
        TORCH_COMMAND="pip install -r /opt/webui-lock.txt" \
    && "$WEBUI_PYTHON" launch.py --skip-torch-cuda-test --xformers --no-download-sd-model --exit

# --- extensions at pinned commits; their installers run through the launcher again ---------
# ADetailer v25.3.0: cloned by tag, then checked against the commit the recordings were
# made with (only its 7-character prefix is known to us: 36189cb).
ARG ADETAILER_REPO=https://github.com/Bing-su/adetailer.git
ARG ADETAILER_TAG=v25.3.0
ARG ADETAILER_COMMIT_PREFIX=36189cb
# sd-webui-controlnet v1.1.455 (A1111 only: Forge has ControlNet built in).
ARG CONTROLNET_REPO=https://github.com/Mikubill/sd-webui-controlnet.git
ARG CONTROLNET_COMMIT=56cec5b2958edf3b1807b7e7b2b1b5186dbd2f81
RUN git clone -q --depth 1 --branch "$ADETAILER_TAG" "$ADETAILER_REPO" "$WEBUI_DIR/extensions/adetailer" \
    && case "$(git -C "$WEBUI_DIR/extensions/adetailer" rev-parse HEAD)" in \
        "$ADETAILER_COMMIT_PREFIX"*) ;; \
        *) echo "ADetailer $ADETAILER_TAG is not commit $ADETAILER_COMMIT_PREFIX" >&2; exit 1 ;; \
    esac \
    && if [ "$WEBUI_BACKEND" = a1111 ]; then \
        cn="$WEBUI_DIR/extensions/sd-webui-controlnet" \
        && git init -q "$cn" \
        && git -C "$cn" remote add origin "$CONTROLNET_REPO" \
        && git -C "$cn" fetch -q --depth 1 origin "$CONTROLNET_COMMIT" \
        && git -C "$cn" checkout -q FETCH_HEAD; \
    fi \
    && export STABLE_DIFFUSION_REPO REQS_FILE=/opt/webui-lock.txt \
    && "$WEBUI_PYTHON" launch.py --skip-torch-cuda-test --xformers --no-download-sd-model --exit \
    && "$WEBUI_PYTHON" /opt/image/lock.py installed /opt/webui-lock.txt \
    && rm -rf /root/.cache

# --- the handler's environment ---------------------------------------------------------------
COPY requirements.txt /opt/worker/requirements.txt
RUN uv venv -q --python 3.11 /opt/venv-worker \
    && uv pip install -q --python "$HANDLER_PYTHON" -r /opt/worker/requirements.txt

# --- the worker's code (last: it changes most often) ---------------------------------------
COPY . /opt/worker
RUN chmod +x /opt/worker/start.sh

# Optional: bake the catalog's default models into the image. The tokens are BuildKit
# secrets (docker build --secret id=hf_token,...): mounted as files for this step only,
# never written to a layer. Without them only models that need no token are fetched.
WORKDIR /opt/worker
# 1 = download the catalog's default models into the image (needs network, maybe tokens).
ARG BAKE_MODELS=0
RUN --mount=type=secret,id=hf_token --mount=type=secret,id=civitai_token \
    if [ "$BAKE_MODELS" = 1 ]; then \
        HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" \
        CIVITAI_TOKEN="$(cat /run/secrets/civitai_token 2>/dev/null || true)" \
        MODELS_DIR=/opt/worker/models \
        "$HANDLER_PYTHON" -c "from cache import ModelCache; from schemas.settings import Settings; \
print(ModelCache(Settings.from_env()).prefetch({}, catalog_defaults=True))"; \
    fi

ENTRYPOINT ["/opt/worker/start.sh"]
