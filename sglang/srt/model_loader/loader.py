"""Model path resolution (default, HF folder, GGUF, hub id) and weight loading into our modules."""

from __future__ import annotations

import contextlib
import glob
import os
import re
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.model_loader.default_model import default_model_file
from sglang.srt.model_loader.gguf import convert_gguf, gguf_source
from sglang.srt.models.registry import get_model_class

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt", "tokenizer*"]
# Checkpoint tensors that no model of ours has a parameter for.
_NEVER_LOADED = ("rotary_emb.inv_freq",)


def resolve_model_path(model_path: str | None) -> str:
    """A local HF folder (config.json, weights, tokenizer) for --model-path.

    None -> the embedded default GGUF; a .gguf file -> its converted folder; a folder -> itself;
    "org/name" -> a hub snapshot.
    """
    if model_path is None:
        return convert_gguf(default_model_file())
    path = os.path.expanduser(model_path)
    if os.path.isfile(path) and path.endswith(".gguf"):
        return convert_gguf(path)
    if os.path.isdir(path):
        return _local_folder(path)
    if not path.endswith(".gguf") and _HUB_ID.fullmatch(model_path):
        return _hub_snapshot(model_path)
    raise ValueError(f"model path {model_path!r}: no such file or folder")


def resolve_gguf_file(model_path: str | None) -> str | None:
    """The GGUF file --model-path names (the default model's when None), or None."""
    if model_path is None:
        return default_model_file()
    path = os.path.expanduser(model_path)
    if os.path.isfile(path) and path.endswith(".gguf"):
        return path
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        ggufs = sorted(glob.glob(os.path.join(path, "*.gguf")))
        return ggufs[0] if ggufs else None
    if os.path.isdir(path):  # a folder converted from a GGUF file
        return gguf_source(path)
    return None


def _local_folder(path: str) -> str:
    if os.path.isfile(os.path.join(path, "config.json")):
        return os.path.abspath(path)
    ggufs = sorted(glob.glob(os.path.join(path, "*.gguf")))
    if ggufs:
        return convert_gguf(ggufs[0])
    raise ValueError(f"model path {path!r}: a folder without config.json or a .gguf file")


def _hub_snapshot(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise RuntimeError(f"model path {repo_id!r}: huggingface_hub is not installed") from e
    with contextlib.suppress(Exception):
        return snapshot_download(repo_id, allow_patterns=_HUB_FILES, local_files_only=True)
    try:
        return snapshot_download(repo_id, allow_patterns=_HUB_FILES)
    except Exception as e:
        raise RuntimeError(
            f"model path {repo_id!r}: not a local path, and the Hugging Face hub is unreachable "
            f"or lacks it ({type(e).__name__}); pass a local folder or .gguf file"
        ) from None


def load_model(config: ModelConfig, device: torch.device) -> nn.Module:
    """Build the registered model class for config on device, in config.dtype, with its weights."""
    model_cls = get_model_class(config.architecture)
    with torch.device(device), _default_dtype(config.dtype):
        model = model_cls(config)
    own_loader = getattr(model, "load_checkpoint", None)  # models with parts loaded their way
    if own_loader is not None:
        own_loader(iter_checkpoint(config.path))
    else:
        load_weights(model, iter_checkpoint(config.path))
    return model.eval()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def iter_checkpoint(folder: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every weight in folder's *.safetensors (else *.bin) files, on CPU."""
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if files:
        from safetensors import safe_open

        for file in files:
            with safe_open(file, framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        return
    files = sorted(glob.glob(os.path.join(folder, "*.bin")))
    if not files:
        raise ValueError(f"model path {folder!r}: no *.safetensors or *.bin weights")
    for file in files:
        yield from torch.load(file, map_location="cpu", weights_only=True).items()


def load_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    params: dict[str, nn.Parameter] | None = None,
    packed: dict | None = None,
) -> None:
    """Copy checkpoint tensors into model's parameters (casting), fusing packed projections.

    `params`: the parameters to fill, each fully (default: all of model's); `packed` overrides
    model.packed_modules ({} loads one to one).
    NOTE: model.packed_modules maps a checkpoint projection name (q_proj) to our fused module
    (qkv_proj) and the shard index in its MergedLinear.output_sizes. A tensor-parallel layer
    (layers/linear.py) holds one rank's shard: its shard_checkpoint() cuts that out of the full
    checkpoint tensor before the copy, so each rank keeps only its slice.
    """
    params = dict(model.named_parameters()) if params is None else params
    packed = getattr(model, "packed_modules", {}) if packed is None else packed
    ignored: set = getattr(model, "ignored_weights", set())
    rows_loaded = dict.fromkeys(params, 0)
    for name, tensor in weights:
        if name in ignored or name.endswith(_NEVER_LOADED):
            continue
        target, shard = _packed_target(name, packed)
        if target not in params and f"model.{target}" in params:
            target = f"model.{target}"  # a base-model checkpoint (embedding models ship these)
        if target not in params:
            raise ValueError(f"checkpoint tensor {name!r} has no place in {type(model).__name__}")
        start, size = _shard_rows(model, target, shard, params[target])
        tensor = _rank_slice(model, target, shard, tensor)
        dest = params[target].data[start : start + size]
        if dest.shape != tensor.shape:
            raise ValueError(
                f"checkpoint tensor {name!r}: shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
            )
        dest.copy_(tensor)
        rows_loaded[target] += size
    missing = [n for n, p in params.items() if rows_loaded[n] != p.shape[0]]
    if missing:
        raise ValueError(f"checkpoint lacks weights for {missing[:5]} ({len(missing)} in all)")


def _packed_target(name: str, packed: dict) -> tuple[str, int | None]:
    for short, (fused, shard) in packed.items():
        if f".{short}." in name:
            return name.replace(f".{short}.", f".{fused}."), shard
    return name, None


def _rank_slice(
    model: nn.Module, target: str, shard: int | None, tensor: torch.Tensor
) -> torch.Tensor:
    """This rank's part of a checkpoint tensor for parameter `target` (all of it unless its
    module is tensor-parallel)."""
    owner = target.rsplit(".", 1)[0] if "." in target else ""
    cut = getattr(model.get_submodule(owner), "shard_checkpoint", None)
    return tensor if cut is None else cut(tensor, shard)


def _shard_rows(
    model: nn.Module, target: str, shard: int | None, param: nn.Parameter
) -> tuple[int, int]:
    if shard is None:
        return 0, param.shape[0]
    sizes = model.get_submodule(target.rsplit(".", 1)[0]).output_sizes
    return sum(sizes[:shard]), sizes[shard]
