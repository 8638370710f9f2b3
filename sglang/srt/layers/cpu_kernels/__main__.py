"""python -m sglang.srt.layers.cpu_kernels: build the CPU kernels now (scripts/setup.sh does)."""

import logging

from sglang.srt.layers.cpu_kernels import build_dir, load

logging.basicConfig(level=logging.INFO)
print("CPU kernels:", build_dir() if load() else "not built; the torch fallback will be used")
