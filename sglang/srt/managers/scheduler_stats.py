"""SchedulerStats: the counters /get_server_info reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SchedulerStats:
    decode_steps: int = 0
    decode_batch_sum: int = 0
    generated_tokens: int = 0
    retractions: int = 0

    def record_decode(self, batch_size: int) -> None:
        self.decode_steps += 1
        self.decode_batch_sum += batch_size

    def mean_decode_batch(self) -> float:
        return self.decode_batch_sum / self.decode_steps if self.decode_steps else 0.0

    def info(self, jump_forward_tokens: int) -> dict[str, Any]:
        return {
            "mean_running_batch_size": self.mean_decode_batch(),
            "num_decode_steps": self.decode_steps,
            "num_generated_tokens": self.generated_tokens,
            "num_jump_forward_tokens": jump_forward_tokens,
            "num_retractions": self.retractions,
        }
