"""GGUF -> Hugging Face folder conversion, done once per file and cached on disk."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile

logger = logging.getLogger(__name__)

_WEIGHTS_FILE = "model.safetensors"
# In a converted folder: the absolute path of the GGUF file it came from (whose quantized
# blocks --quantization auto keeps).
SOURCE_FILE = "gguf_source.txt"


def gguf_cache_root() -> str:
    """~/.cache/sglang/gguf, or $SGLANG_CACHE_DIR/gguf."""
    base = os.environ.get("SGLANG_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "sglang"
    )
    return os.path.join(base, "gguf")


def gguf_cache_dir(gguf_path: str) -> str:
    """The cache folder of one GGUF file; the key changes when the file is replaced or touched."""
    path = os.path.abspath(gguf_path)
    st = os.stat(path)
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(gguf_cache_root(), f"{stem}-{key}")


# GGUF `general.architecture` -> the Hugging Face architecture transformers' GGUF reader builds
# (llama.cpp writes Mistral models as "llama"; transformers tells them apart by their name).
GGUF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3moe": "Qwen3MoeForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}


def gguf_architecture(gguf_path: str) -> str:
    """The file's `general.architecture` (e.g. "llama"), read from its header."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(gguf_path).fields["general.architecture"]
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"model path {gguf_path!r}: not a readable GGUF file ({e})") from None
    return bytes(field.parts[field.data[0]]).decode("utf-8", "replace")


def supported_gguf_architectures() -> list[str]:
    """The GGUF architectures whose model we serve."""
    from sglang.srt.models.registry import MODEL_REGISTRY

    return sorted(a for a, hf in GGUF_ARCHITECTURES.items() if hf in MODEL_REGISTRY)


def check_gguf_architecture(gguf_path: str) -> str:
    """The file's architecture, or a ValueError naming it and the supported ones."""
    arch = gguf_architecture(gguf_path)
    supported = supported_gguf_architectures()
    if arch not in supported:
        raise ValueError(
            f"GGUF architecture {arch!r} ({os.path.basename(gguf_path)}) is not supported; "
            f"supported GGUF architectures: {', '.join(supported)}"
        )
    return arch


def convert_gguf(gguf_path: str) -> str:
    """Return an HF folder (config, safetensors, tokenizer) for gguf_path, converting on first use.

    NOTE: the folder appears by one rename of a finished temp folder, so a crash mid-conversion
    leaves no half cache, and two processes converting at once both end with a whole folder.
    """
    if not os.path.isfile(gguf_path):
        raise ValueError(f"model path {gguf_path!r}: GGUF file not found")
    final = gguf_cache_dir(gguf_path)
    if os.path.isfile(os.path.join(final, _WEIGHTS_FILE)):
        _record_source(gguf_path, final)
        return final
    check_gguf_architecture(gguf_path)  # (a file that converted once was checked then)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(final))
    try:
        logger.info("converting %s to %s (once)", gguf_path, final)
        _write_hf_folder(gguf_path, tmp)
        _record_source(gguf_path, tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is a plain folder
        os.rename(tmp, final)
    except OSError:
        if not os.path.isfile(os.path.join(final, _WEIGHTS_FILE)):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _record_source(gguf_path: str, folder: str) -> None:
    path = os.path.join(folder, SOURCE_FILE)
    if not os.path.isfile(path):
        with contextlib.suppress(OSError), open(path, "w", encoding="utf-8") as f:
            f.write(os.path.abspath(gguf_path))


def gguf_source(folder: str) -> str | None:
    """The GGUF file a converted folder came from, if it still exists."""
    try:
        with open(os.path.join(folder, SOURCE_FILE), encoding="utf-8") as f:
            path = f.read().strip()
    except OSError:
        return None
    return path if os.path.isfile(path) else None


def _write_hf_folder(gguf_path: str, out_dir: str) -> None:
    """Dequantize with transformers' GGUF reader and write config, weights and tokenizer."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(os.path.abspath(gguf_path))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)  # shares storage with the embedding
    save_file(weights, os.path.join(out_dir, _WEIGHTS_FILE), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the saved weights are plain floats
    config.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer.save_pretrained(out_dir)
    _embed_chat_template(tokenizer.chat_template, out_dir)


def _embed_chat_template(template: str | None, out_dir: str) -> None:
    """Keep the chat template in tokenizer_config.json too, where older readers look for it."""
    if not template:
        return
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg["chat_template"] = template
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
