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
