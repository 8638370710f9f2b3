"""Model classes by Hugging Face architecture name (config.json's architectures[0]).

A base-model architecture (`Qwen2Model`, `LlamaModel`, `MistralModel`, ...: a decoder saved
without its lm_head, as embedding models ship) maps to its family's causal-LM class, so every
family registered here serves embeddings too; such a model is served as an embedding model.
"""

from __future__ import annotations

from torch import nn

from sglang.srt.models.gemma2 import Gemma2ForCausalLM, GemmaForCausalLM
from sglang.srt.models.gemma3 import Gemma3ForCausalLM
from sglang.srt.models.llama import LlamaForCausalLM
from sglang.srt.models.llava import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration
from sglang.srt.models.phi3 import Phi3ForCausalLM
from sglang.srt.models.qwen2 import Qwen2ForCausalLM
from sglang.srt.models.qwen2_vl import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)
from sglang.srt.models.qwen3 import Qwen3ForCausalLM
from sglang.srt.models.qwen3_moe import Qwen3MoeForCausalLM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    # the Llama layer; its sliding window (config.sliding_window, every layer) is honored
    "MistralForCausalLM": LlamaForCausalLM,
    "Phi3ForCausalLM": Phi3ForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
    "GemmaForCausalLM": GemmaForCausalLM,
    "Gemma2ForCausalLM": Gemma2ForCausalLM,
    # Gemma 3 text (Gemma3TextConfig: gemma-3-1b); the vision-language models are not served
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
    "LlavaForConditionalGeneration": LlavaForConditionalGeneration,
    "LlavaNextForConditionalGeneration": LlavaNextForConditionalGeneration,
    "Qwen2VLForConditionalGeneration": Qwen2VLForConditionalGeneration,
    "Qwen2_5_VLForConditionalGeneration": Qwen2_5_VLForConditionalGeneration,
}


def get_model_class(architecture: str) -> type[nn.Module]:
    if architecture in MODEL_REGISTRY:
        return MODEL_REGISTRY[architecture]
    causal = _causal_lm_name(architecture)
    if causal is not None:
        return MODEL_REGISTRY[causal]
    supported = sorted(MODEL_REGISTRY) + sorted(_base_model_names())
    raise ValueError(f"architecture {architecture!r} is not supported; supported: {supported}")


def is_embedding_architecture(architecture: str) -> bool:
    """A base-model architecture (a decoder without lm_head): served as an embedding model."""
    return architecture not in MODEL_REGISTRY and _causal_lm_name(architecture) is not None


def _causal_lm_name(architecture: str) -> str | None:
    """`Qwen2Model` -> `Qwen2ForCausalLM` when that class is registered; else None."""
    if not architecture.endswith("Model"):
        return None
    name = architecture[: -len("Model")] + "ForCausalLM"
    return name if name in MODEL_REGISTRY else None


def _base_model_names() -> list[str]:
    return [n[: -len("ForCausalLM")] + "Model" for n in MODEL_REGISTRY if n.endswith("ForCausalLM")]
