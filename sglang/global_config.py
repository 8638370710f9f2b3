"""Process-wide settings of the frontend language (the default backend and a few knobs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class GlobalConfig:
    # Set by sglang.set_default_backend(); a BaseBackend or a Runtime
    default_backend: Optional[Any] = None
    # 0: quiet; 2: print each program's text when it ends
    verbosity: int = 0
    # run_batch traces the program and caches its constant prefix before the batch
    enable_precache_with_tracing: bool = True
    # run_batch(num_threads="auto") uses min(batch size, this)
    max_auto_batch_threads: int = 128


global_config = GlobalConfig()


def resolve_backend(backend: Optional[Any] = None) -> Any:
    """The backend to use: `backend`, else the default one; a Runtime stands for its endpoint."""
    chosen = backend if backend is not None else global_config.default_backend
    if chosen is None:
        raise ValueError(
            "no backend: pass backend=... or call sglang.set_default_backend(...) first"
        )
    return getattr(chosen, "endpoint", chosen)
