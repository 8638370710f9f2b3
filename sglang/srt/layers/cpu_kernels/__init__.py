"""Small C++ kernels for CPU, built on first use with the compiler on the machine.

The build (torch.utils.cpp_extension, -O3 for this CPU) is cached under
$SGLANG_CACHE_DIR/kernels (default ~/.cache/sglang/kernels), keyed by the source, the torch
version and the CPU's instruction sets, so it happens once per machine; `scripts/setup.sh`
runs it. Without a compiler, or if the build fails, load() returns None after one log line and
the callers use their pure-torch paths. SGLANG_DISABLE_CPU_KERNELS=1 skips them.

Kernels: decode attention over the paged KV pool (paged_attention.cpp); RMSNorm with its
residual add, SiLU-and-mul, rotary embedding, the KV-pool store and a row argmax
(fused_ops.cpp); a Llama-family DECODE pass run layer by layer from C++ (decode_layers.cpp).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
from types import ModuleType
from typing import Optional

logger = logging.getLogger(__name__)

_HEADERS = ("kernels.h",)  # included by the sources: part of the build key
_BUILD_FLAGS_VERSION = "2"  # bump when the compiler flags below change
_SOURCES = ("bindings.cpp", "paged_attention.cpp", "fused_ops.cpp", "decode_layers.cpp")


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor()


def _build_key() -> str:
    import torch

    h = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in (*_SOURCES, *_HEADERS):
        with open(os.path.join(here, name), "rb") as f:
            h.update(f.read())
    h.update(torch.__version__.encode())
    h.update(_BUILD_FLAGS_VERSION.encode())
    h.update(_cpu_flags().encode())
    return h.hexdigest()[:12]


def build_dir() -> str:
    base = os.environ.get("SGLANG_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "sglang"
    )
    return os.path.join(base, "kernels", _build_key())


def _import_built(path: str, name: str) -> Optional[ModuleType]:
    """The already-built module in path, imported without invoking the build tools."""
    import importlib.util

    import torch  # noqa: F401 - the module links against torch's libraries

    library = os.path.join(path, f"{name}.so")
    if not os.path.isfile(library):
        return None
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def load() -> Optional[ModuleType]:
    """The compiled kernels module, or None (no compiler, failed build, or disabled).

    NOTE: a module built before is imported directly: the build tools never run again for the
    same key (they would recheck, and a changed toolchain would rebuild while a server waits).
    """
    if os.environ.get("SGLANG_DISABLE_CPU_KERNELS") == "1":
        return None
    name = f"sglang_cpu_kernels_{_build_key()}"
    try:
        built = _import_built(build_dir(), name)
        if built is not None:
            return built
    except Exception as e:  # noqa: BLE001 - a broken library is rebuilt below
        logger.warning("rebuilding the CPU kernels: %s", str(e).splitlines()[0])
    try:
        from torch.utils.cpp_extension import load as load_extension

        here = os.path.dirname(os.path.abspath(__file__))
        path = build_dir()
        os.makedirs(path, exist_ok=True)
        return load_extension(
            name=name,
            sources=[os.path.join(here, name) for name in _SOURCES],
            extra_cflags=[
                "-O3",
                "-march=native",
                # lets float sums vectorize; infinities and NaNs keep their meaning
                "-fassociative-math",
                "-fno-signed-zeros",
                "-fno-trapping-math",
                # at::parallel_for is header code over OpenMP: without it, one thread
                "-fopenmp",
            ],
            extra_ldflags=["-fopenmp"],
            build_directory=path,
            verbose=False,
        )
    except Exception as e:  # noqa: BLE001 - any build failure means the torch fallback
        logger.warning("CPU kernels unavailable, using torch ops: %s", str(e).splitlines()[0])
        return None



def for_tensor(x) -> Optional[ModuleType]:
    """The kernels for ops on x: x on CPU, the kernels built, and not inside torch.compile's
    tracing (which fuses the torch ops itself); else None (use the torch ops)."""
    import torch

    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    return load()
