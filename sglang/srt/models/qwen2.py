"""Qwen2 decoder: the Llama layout with biases on the q/k/v projections."""

from __future__ import annotations

from sglang.srt.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True
