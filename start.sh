#!/usr/bin/env bash
# Container entry point:
#   1. make sure the model folders exist on the network volume (or a local fallback),
#   2. start A1111 (or Forge) in the background, API only, bound to 127.0.0.1, logging to a
#      file and writing its pid where the handler's supervisor (a1111/supervisor.py) reads it,
#   3. run the RunPod handler in the foreground; its first job waits until A1111 is ready.
# Arguments given to this script are passed on to the handler (e.g. --rp_serve_api,
# --test_input '{...}'). When the handler exits, A1111 is stopped and its status returned.
#
# Overridable by environment (tests use these to run the real script with a stand-in):
#   A1111_CMD         the A1111 command (default: "$WEBUI_PYTHON $WEBUI_DIR/launch.py");
#                     word-split, then the flags below are appended
#   A1111_ARGS_EXTRA  extra A1111 flags, word-split and appended last
#   A1111_PORT        port A1111 listens on (default 3000); A1111_URL follows it
#   HANDLER_CMD       the handler command (default: "$HANDLER_PYTHON -u $WORKER_DIR/handler.py")
#   MODELS_DIR        model root (default: /runpod-volume/models, else $WORKER_DIR/models)
#   A1111_STATE_DIR   where the pid and log files go (default: /tmp/a1111-worker)
#   A1111_LOG_ECHO    1 (default) also copies A1111's output to this script's stderr
#   A1111_HF_HOME     A1111's Hugging Face cache (default: $MODELS_DIR/.cache/huggingface)
#   A1111_HASHING     1 lets A1111 hash checkpoints again (drops --no-hashing; default 0)
#   A1111_HALF_VAE    1 runs the VAE in half precision again (drops --no-half-vae; default 0)
#   A1111_TCMALLOC    0 stops preloading tcmalloc into A1111 (default 1: preloaded when present)
#   A1111_TCMALLOC_DIRS  folders searched for libtcmalloc (default: the system library folders)
#   START_MODELS      extra catalog ids placed before A1111 starts ("none": place nothing)
#   START_MODELS_CMD  the placing command (default: "$HANDLER_PYTHON -m cache.at_start")
set -euo pipefail

WORKER_DIR="${WORKER_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
VOLUME_DIR="${VOLUME_DIR:-/runpod-volume}"
WEBUI_DIR="${WEBUI_DIR:-/opt/webui}"
WEBUI_PYTHON="${WEBUI_PYTHON:-/opt/venv-webui/bin/python}"
HANDLER_PYTHON="${HANDLER_PYTHON:-/opt/venv-worker/bin/python}"
A1111_PORT="${A1111_PORT:-3000}"
A1111_STATE_DIR="${A1111_STATE_DIR:-/tmp/a1111-worker}"
A1111_LOG_ECHO="${A1111_LOG_ECHO:-1}"
export A1111_PID_FILE="${A1111_PID_FILE:-$A1111_STATE_DIR/a1111.pid}"
export A1111_LOG_FILE="${A1111_LOG_FILE:-$A1111_STATE_DIR/a1111.log}"
export A1111_URL="${A1111_URL:-http://127.0.0.1:$A1111_PORT}"

MODEL_KINDS=(checkpoints loras embeddings controlnet controlnet/annotators adetailer upscalers vae text_encoder)

log() { printf '[start.sh] %s\n' "$*" >&2; }

make_model_dirs() {
    local root=$1 kind
    for kind in "${MODEL_KINDS[@]}"; do
        mkdir -p "$root/$kind" 2>/dev/null || return 1
    done
}

# --- 1. model folders -------------------------------------------------------------------
if [[ -n "${MODELS_DIR:-}" ]]; then
    if ! make_model_dirs "$MODELS_DIR"; then
        log "ERROR: cannot create the model folders under MODELS_DIR=$MODELS_DIR"
        exit 1
    fi
elif [[ -d "$VOLUME_DIR" ]] && make_model_dirs "$VOLUME_DIR/models"; then
    MODELS_DIR="$VOLUME_DIR/models"
else
    if [[ -d "$VOLUME_DIR" ]]; then
        log "WARNING: $VOLUME_DIR is mounted but not writable;"
    else
        log "WARNING: no network volume at $VOLUME_DIR;"
    fi
    MODELS_DIR="$WORKER_DIR/models"
    log "WARNING: models go to $MODELS_DIR inside the container and are downloaded again by every new worker."
    if ! make_model_dirs "$MODELS_DIR"; then
        log "ERROR: cannot create the model folders under $MODELS_DIR"
        exit 1
    fi
fi
export MODELS_DIR
log "models: $MODELS_DIR"

# ADetailer has no flag for its model folder: it scans <webui>/models/adetailer, so that
# folder is pointed at the volume. A real folder there (from the image) is left alone.
if [[ -d "$WEBUI_DIR/models" ]]; then
    ad_link="$WEBUI_DIR/models/adetailer"
    if [[ -L "$ad_link" || ! -e "$ad_link" ]]; then
        ln -sfn "$MODELS_DIR/adetailer" "$ad_link"
    elif rmdir "$ad_link" 2>/dev/null; then
        ln -sfn "$MODELS_DIR/adetailer" "$ad_link"
    else
        log "WARNING: $ad_link is a non-empty folder; ADetailer models on the volume are not seen"
    fi
fi

# --- start-time models (cache/at_start.py) -----------------------------------------------
# A1111 reads upscalers and ADetailer detectors only while it starts, so the catalog models
# flagged "at_start" for this backend, and the catalog ids in START_MODELS, are placed first.
# It runs before A1111 rather than beside it: A1111 scans those folders a few seconds into
# its start, and a file still downloading then would not be seen. Nothing else here waits,
# and with the files already on the volume it costs one Python start. A model it cannot
# place is logged; A1111 starts anyway. START_MODELS_CMD overrides the command (tests).
if [[ "${START_MODELS:-}" != "none" ]]; then
    if [[ -n "${START_MODELS_CMD:-}" ]]; then
        read -r -a start_models_cmd <<<"$START_MODELS_CMD"
    else
        start_models_cmd=("$HANDLER_PYTHON" -m cache.at_start)
    fi
    if ! (cd "$WORKER_DIR" && exec "${start_models_cmd[@]}"); then
        log "WARNING: some start-time models were not placed (lines [start-models] above); A1111 starts without them"
    fi
fi

# --- 2. A1111 in the background ----------------------------------------------------------
mkdir -p "$A1111_STATE_DIR" "$(dirname "$A1111_PID_FILE")" "$(dirname "$A1111_LOG_FILE")"
rm -f "$A1111_PID_FILE"

if [[ -n "${A1111_CMD:-}" ]]; then
    read -r -a a1111_cmd <<<"$A1111_CMD"
    a1111_cwd="${A1111_CWD:-$PWD}"
else
    a1111_cmd=("$WEBUI_PYTHON" "$WEBUI_DIR/launch.py")
    a1111_cwd="${A1111_CWD:-$WEBUI_DIR}"
fi

# --server-name 127.0.0.1 is not optional: with --nowebui and no --server-name, uvicorn
# binds every interface, and the worker keeps A1111 on loopback only. --skip-prepare-environment and
# --skip-install: everything was installed when the image was built; no pip or git at start.
# --hide-ui-dir-config: A1111 then refuses, through the API too, the options that name folders
# (outdir_*, temp_dir, filename patterns), so no request can make it write files elsewhere.
a1111_args=(
    --api --nowebui --port "$A1111_PORT" --server-name 127.0.0.1 --hide-ui-dir-config
    --xformers --opt-sdp-attention
    --skip-prepare-environment --skip-install --no-download-sd-model
    --ckpt-dir "$MODELS_DIR/checkpoints"
    --lora-dir "$MODELS_DIR/loras"
    --embeddings-dir "$MODELS_DIR/embeddings"
    --controlnet-dir "$MODELS_DIR/controlnet"
    --esrgan-models-path "$MODELS_DIR/upscalers"
)
# --no-hashing: A1111 would sha256 every checkpoint it loads (3.4 s of a 6.7 s SD1.5 load, and
# its hash cache lives in the container, so every new worker pays again); the handler matches
# checkpoints by file name, not hash. --no-half-vae: SDXL's VAE overflows in fp16 (black images).
[[ "${A1111_HASHING:-0}" == "1" ]] || a1111_args+=(--no-hashing)
[[ "${A1111_HALF_VAE:-0}" == "1" ]] || a1111_args+=(--no-half-vae)
# Forge reads Flux's separate VAE and text encoders (ae, clip_l, t5xxl) from these folders
# and lists them in /sdapi/v1/sd-modules; A1111 1.10 has no --text-encoder-dir and would
# refuse to start with it. ControlNet's preprocessor weights go on the volume too (downloaded
# once for all workers); the flag's name differs between sd-webui-controlnet and Forge.
if [[ "${WEBUI_BACKEND:-a1111}" == "forge" ]]; then
    a1111_args+=(--vae-dir "$MODELS_DIR/vae" --text-encoder-dir "$MODELS_DIR/text_encoder")
    a1111_args+=(--controlnet-preprocessor-models-dir "$MODELS_DIR/controlnet/annotators")
else
    a1111_args+=(--controlnet-annotator-models-path "$MODELS_DIR/controlnet/annotators")
fi
if [[ -n "${A1111_ARGS_EXTRA:-}" ]]; then
    read -r -a extra_args <<<"$A1111_ARGS_EXTRA"
    a1111_args+=("${extra_args[@]}")
fi

# A1111 and its extensions fetch small files from Hugging Face at start-up (CLIP tokenizer
# configs, ADetailer's YOLO detectors). Their cache goes on the volume, so only the first
# worker downloads them and a worker without internet still finds them.
A1111_HF_HOME="${A1111_HF_HOME:-$MODELS_DIR/.cache/huggingface}"
mkdir -p "$A1111_HF_HOME" 2>/dev/null || log "WARNING: cannot create $A1111_HF_HOME"

# tcmalloc for A1111 only: loading a checkpoint allocates and frees many large buffers, which
# glibc's malloc keeps fragmented (resident memory grows with every model switch).
find_tcmalloc() {
    local name dir
    for name in libtcmalloc_minimal.so.4 libtcmalloc.so.4; do
        for dir in ${A1111_TCMALLOC_DIRS:-/usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib}; do
            if [[ -f "$dir/$name" ]]; then
                printf '%s\n' "$dir/$name"
                return 0
            fi
        done
    done
    return 1
}
a1111_preload="${LD_PRELOAD:-}"
if [[ "${A1111_TCMALLOC:-1}" == "1" ]]; then
    if tcmalloc="$(find_tcmalloc)"; then
        a1111_preload="$tcmalloc${a1111_preload:+:$a1111_preload}"
        log "tcmalloc: $tcmalloc (preloaded for A1111)"
    else
        log "tcmalloc: not found, A1111 uses glibc's malloc"
    fi
fi

log "starting A1111: ${a1111_cmd[*]} ${a1111_args[*]}"
log "A1111 log: $A1111_LOG_FILE"
: >"$A1111_LOG_FILE"
if [[ "$A1111_LOG_ECHO" == "1" ]]; then
    (cd "$a1111_cwd" && HF_HOME="$A1111_HF_HOME" LD_PRELOAD="$a1111_preload" exec "${a1111_cmd[@]}" "${a1111_args[@]}") \
        > >(tee -a "$A1111_LOG_FILE" >&2) 2>&1 &
else
    (cd "$a1111_cwd" && HF_HOME="$A1111_HF_HOME" LD_PRELOAD="$a1111_preload" exec "${a1111_cmd[@]}" "${a1111_args[@]}") \
        >>"$A1111_LOG_FILE" 2>&1 &
fi
a1111_pid=$!
# Written atomically: the supervisor must never read a half-written pid.
printf '%s\n' "$a1111_pid" >"$A1111_PID_FILE.tmp"
mv -f "$A1111_PID_FILE.tmp" "$A1111_PID_FILE"
log "A1111 pid $a1111_pid"

# --- 3. the handler in the foreground ----------------------------------------------------
if [[ -n "${HANDLER_CMD:-}" ]]; then
    read -r -a handler_cmd <<<"$HANDLER_CMD"
else
    handler_cmd=("$HANDLER_PYTHON" -u "$WORKER_DIR/handler.py")
fi

handler_pid=""

stop_a1111() {
    if kill -0 "$a1111_pid" 2>/dev/null; then
        kill -TERM "$a1111_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$a1111_pid" 2>/dev/null || return 0
            sleep 0.2
        done
        kill -KILL "$a1111_pid" 2>/dev/null || true
    fi
}

# shellcheck disable=SC2329  # invoked by the trap below
on_signal() {
    log "stopping (signal)"
    if [[ -n "$handler_pid" ]]; then
        kill -TERM "$handler_pid" 2>/dev/null || true
        wait "$handler_pid" 2>/dev/null || true
    fi
    stop_a1111
    exit 143
}
trap on_signal TERM INT

# The handler runs in the background and is waited for, so that the traps above run at
# once on SIGTERM instead of after the handler exits. Its cwd is the worker folder because
# the RunPod SDK looks for test_input.json in the current directory.
(cd "$WORKER_DIR" && exec "${handler_cmd[@]}" "$@") &
handler_pid=$!
status=0
wait "$handler_pid" || status=$?
log "handler exited with status $status"
stop_a1111
exit "$status"
