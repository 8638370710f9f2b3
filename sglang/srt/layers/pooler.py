"""Pooling an embedding model's hidden states into one vector per request, across prefill chunks.

The pooling comes from the model folder: sentence-transformers' layout (`modules.json` with a
`Pooling` module whose `config.json` sets `pooling_mode_cls_token`, `pooling_mode_mean_tokens`
or `pooling_mode_lasttoken`, and an optional `Normalize` module). A folder without
`modules.json` gets last-token pooling with L2 normalization, as Qwen3-Embedding and gte-Qwen2
use. Matryoshka truncation (`dimensions`) keeps the first dimensions, then normalizes.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch


class PoolingType(str, enum.Enum):
    LAST = "last"  # the hidden state of the last prompt token
    MEAN = "mean"  # the mean over all prompt tokens
    CLS = "cls"  # the hidden state of the first prompt token


# sentence-transformers' Pooling config keys we implement, and those we do not.
_ST_MODES = {
    "pooling_mode_lasttoken": PoolingType.LAST,
    "pooling_mode_mean_tokens": PoolingType.MEAN,
    "pooling_mode_cls_token": PoolingType.CLS,
}
_ST_UNSUPPORTED_MODES = (
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
)
# sentence-transformers module types that change nothing here (the model itself is ours).
_ST_PASSIVE_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass(frozen=True)
class PoolingConfig:
    """How one model's hidden states become its embedding."""

    pooling_type: PoolingType = PoolingType.LAST
    normalize: bool = True
    # config.json's matryoshka_dimensions (the sizes `dimensions` may take), or None
    matryoshka_dimensions: Optional[tuple[int, ...]] = None
    matryoshka: bool = False  # the model allows `dimensions` (config.json says so)

    @classmethod
    def from_folder(cls, path: str) -> PoolingConfig:
        """Read the pooling of the model folder at path (see the module docstring)."""
        dims = _read_json(os.path.join(path, "config.json")) or {}
        matryoshka_dims = dims.get("matryoshka_dimensions")
        matryoshka = bool(matryoshka_dims) or bool(dims.get("is_matryoshka", False))
        modules = _read_json(os.path.join(path, "modules.json"))
        pooling_type, normalize = PoolingType.LAST, True
        if modules is not None:
            pooling_type, normalize = _from_st_modules(path, modules)
        return cls(
            pooling_type,
            normalize,
            tuple(int(d) for d in matryoshka_dims) if matryoshka_dims else None,
            matryoshka,
        )

    def info(self) -> dict[str, Any]:
        """What the HTTP side needs to know (model info)."""
        dims = list(self.matryoshka_dimensions) if self.matryoshka_dimensions else None
        return {
            "pooling": self.pooling_type.value,
            "normalize": self.normalize,
            "is_matryoshka": self.matryoshka,
            "matryoshka_dimensions": dims,
        }


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _from_st_modules(path: str, modules: Any) -> tuple[PoolingType, bool]:
    """(pooling type, normalize) from sentence-transformers' modules.json entries."""
    if not isinstance(modules, list):
        raise ValueError(f"{path}/modules.json: expected a list of modules")
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules}
    other = sorted(k for k in kinds if k not in _ST_PASSIVE_MODULES)
    if other:
        raise ValueError(
            f"{path}/modules.json: sentence-transformers module(s) {other} are not supported "
            f"(supported: {list(_ST_PASSIVE_MODULES)})"
        )
    pooling_type = PoolingType.LAST
    if "Pooling" in kinds:
        folder = os.path.join(path, kinds["Pooling"].get("path", ""))
        pooling_type = _st_pooling_mode(folder)
    return pooling_type, "Normalize" in kinds


def _st_pooling_mode(folder: str) -> PoolingType:
    """The one pooling mode a sentence-transformers Pooling config.json turns on."""
    cfg = _read_json(os.path.join(folder, "config.json"))
    if cfg is None:
        raise ValueError(f"{folder}: the Pooling module has no config.json")
    unsupported = [k for k in _ST_UNSUPPORTED_MODES if cfg.get(k)]
    if unsupported:
        raise ValueError(f"{folder}/config.json: {unsupported} pooling is not supported")
    modes = [mode for key, mode in _ST_MODES.items() if cfg.get(key)]
    if len(modes) != 1:
        raise ValueError(
            f"{folder}/config.json: expected exactly one of {list(_ST_MODES)} to be true, "
            f"found {len(modes)}"
        )
    return modes[0]


@dataclass
class PoolState:
    """One request's pooling so far: folded chunk by chunk, finished at its last chunk."""

    dimensions: Optional[int] = None  # Matryoshka truncation the request asked for
    total: Optional[torch.Tensor] = None  # [D] float32: sum of the rows so far (mean)
    count: int = 0  # rows in total
    picked: Optional[torch.Tensor] = None  # [D] float32: first row (cls) or newest last row
    embedding: Optional[list[float]] = None  # the result, filled at the last chunk

    def reset(self) -> None:
        self.total, self.count, self.picked, self.embedding = None, 0, None, None


class Pooler:
    """Folds hidden-state rows into PoolStates and finishes them into embeddings."""

    def __init__(self, config: PoolingConfig) -> None:
        self.config = config

    def fold(self, state: PoolState, rows: torch.Tensor, start: int) -> None:
        """Fold in the rows of prompt positions start .. start + n - 1; rows: [n, D]."""
        if start == 0:  # a request run again from its start (retracted) begins anew
            state.reset()
        kind = self.config.pooling_type
        if kind == PoolingType.MEAN:
            part = rows.float().sum(dim=0)  # [D]
            state.total = part if state.total is None else state.total + part
            state.count += int(rows.shape[0])
        elif kind == PoolingType.CLS:
            if start == 0:
                state.picked = rows[0].float()
        else:
            state.picked = rows[-1].float()

    def finish(self, state: PoolState) -> torch.Tensor:
        """The embedding [D'] float32 (D' = state.dimensions or D), normalized if configured."""
        if self.config.pooling_type == PoolingType.MEAN:
            assert state.total is not None and state.count > 0, "no rows were folded in"
            vector = state.total / state.count
        else:
            assert state.picked is not None, "no rows were folded in"
            vector = state.picked
        if state.dimensions is not None:
            vector = vector[: state.dimensions]
        if self.config.normalize:
            vector = torch.nn.functional.normalize(vector, p=2.0, dim=-1)
        return vector

    def pool(self, hidden: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Whole sequences at once: hidden [sum(lengths), D] -> embeddings [B, D]."""
        out = []
        for rows in hidden.split(lengths):
            state = PoolState()
            self.fold(state, rows, 0)
            out.append(self.finish(state))
        return torch.stack(out)
