"""--quantization: low-bit forms for a loaded model's linear weights (and the lm_head).

- ``auto``: a GGUF checkpoint keeps its own quantization where it maps onto a low-bit kernel
  (Q4_0 / Q4_1 -> int4, Q8_0 -> int8; see layers/quantization.py); other checkpoints stay dense.
- ``none``: dense weights only (a GGUF's are dequantized).
- ``int8`` / ``int4``: every linear weight and the lm_head quantized at load, round-to-nearest
  (int8: one scale per row; int4: asymmetric, groups of 32).

Each layer then multiplies small batches through its low-bit form and large ones through its
dense weight, which is set to the low-bit form's exact dequantization, so both paths multiply
by the same numbers. Low-bit forms exist for CPU only; elsewhere the dense weight is used.

At tensor-parallel size N each rank builds the forms of its own shards: a GGUF tensor's codes,
scales and zeros are cut the way the layer cuts the dense weight (its shard_checkpoint: output
rows of q/k/v and gate/up, input groups of o_proj and down_proj, vocabulary rows of the lm_head),
so a rank multiplies by exactly the numbers of its part of the tp_size 1 weight; int8 / int4 at
load quantize each rank's dense shard (the same int4 groups; int8's one scale per row is then
per row of the rank's columns in o_proj and down_proj).

NOTE: every GGUF tensor mapped onto a form is checked against the weight transformers'
GGUF reader dequantized for the same parameter; a tensor that does not agree (an unknown row
order, say) keeps its dense weight and is logged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from sglang.srt.layers import quantization as q
from sglang.srt.layers.linear import Linear

logger = logging.getLogger(__name__)

# GGUF tensor name (llama.cpp's) -> Hugging Face parameter name, for the architectures we load.
_GGUF_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GGUF_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight")
# A mapped GGUF tensor must agree with transformers' dequantization within this share of the
# row's largest weight (bf16 rounding of scale and zero stays far below it; a wrong row order
# does not).
_AGREEMENT = 1e-2


@dataclass
class QuantReport:
    """What apply_quantization did, for the log and /get_server_info."""

    method: str
    forms: dict[str, str] = field(default_factory=dict)  # module name -> "int4" | "int8"
    dense: list[str] = field(default_factory=list)  # modules left dense, with the reason
    quant_bytes: int = 0

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for kind in self.forms.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        parts = [f"{n} {k}" for k, n in sorted(kinds.items())] or ["none"]
        text = f"quantization={self.method}: {', '.join(parts)} weights ({self.quant_bytes / 2**20:.1f} MiB)"
        if self.dense:
            text += f"; {len(self.dense)} kept dense"
        return text


def apply_quantization(
    model: nn.Module, method: str, gguf_path: Optional[str], device: torch.device
) -> tuple[QuantReport, Optional[q.QuantWeight]]:
    """Give model's Linears their low-bit forms; returns (report, the lm_head's form or None)."""
    if method not in q.QUANTIZATION_CHOICES:
        raise ValueError(f"quantization={method!r}: expected one of {q.QUANTIZATION_CHOICES}")
    report = QuantReport(method)
    if method == "none" or device.type != "cpu":
        if method != "none":
            report.dense.append(f"all: low-bit kernels run on CPU only, not {device.type}")
        return report, None
    if method == "auto":
        if gguf_path is None:
            return report, None
        return _from_gguf(model, gguf_path, report)
    for name, module in _linears(model):
        _install(module, name, _quantize_dense(module.weight, method), report)
    lm_weight = model.lm_head_weight
    lm_head, lm_dense = _quantize_dense(lm_weight, method)
    _set_dense(lm_weight, lm_dense)
    report.forms["lm_head"] = method
    report.quant_bytes += lm_head.nbytes
    return report, lm_head


def _linears(model: nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, Linear) and not name.endswith("lm_head"):
            yield name, module


def _quantize_dense(weight: torch.Tensor, method: str) -> tuple[q.QuantWeight, torch.Tensor]:
    """(form, its dequantized float32 weight) of a dense weight; method is int8 or int4."""
    if method == "int8":
        form = q.quantize_int8(weight)
        return form, q.int8_dequantize(form)
    form, codes = q.quantize_int4(weight)
    return form, q.int4_dequantize(codes, form)


def _install(module: Linear, name: str, form_and_dense, report: QuantReport) -> None:
    form, dense = form_and_dense
    module.quant = form
    _set_dense(module.weight, dense)
    report.forms[name] = "int4" if isinstance(form, q.Int4Weight) else "int8"
    report.quant_bytes += form.nbytes


def _set_dense(param: torch.Tensor, dense: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(dense.to(param.dtype))


# ---- GGUF ------------------------------------------------------------------------------------


def _from_gguf(
    model: nn.Module, gguf_path: str, report: QuantReport
) -> tuple[QuantReport, Optional[q.QuantWeight]]:
    from gguf import GGUFReader

    reader = GGUFReader(gguf_path)
    config = model.config
    packed: dict = getattr(model, "packed_modules", {})
    # module name -> {shard index: (codes, scale, zero)}; None marks a shard that does not map
    shards: dict[str, dict[int, Optional[tuple]]] = {}
    lm_head = None
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        hf_name = _hf_name(tensor.name)
        if hf_name is None:
            continue
        raw = np.asarray(tensor.data)
        if hf_name in ("model.embed_tokens.weight", "lm_head.weight"):
            if hf_name == "lm_head.weight" or config.tie_word_embeddings:
                lm_head = _lm_head_form(model, kind, raw, tensor, report)
            continue
        perm = _row_permutation(hf_name, raw.shape[0], config, model)
        module_name, shard = _module_of(hf_name, packed)
        codes = None
        if kind in q.GGUF_INT4_TYPES:
            codes = q.gguf_int4_codes(kind, raw)
            if perm is not None:
                codes = tuple(t.index_select(0, perm) for t in codes)
            codes = _rank_part(model.get_submodule(module_name), codes, shard)
        shards.setdefault(module_name, {})[shard if shard is not None else 0] = (
            codes if codes is not None else (kind,)
        )
    for module_name, parts in shards.items():
        module = model.get_submodule(module_name)
        expected = len(getattr(module, "output_sizes", [None]))
        kinds = [p[0] for p in parts.values() if len(p) == 1]
        if kinds or len(parts) != expected:
            report.dense.append(f"{module_name}: GGUF type {kinds or 'missing shard'}")
            continue
        codes, scale, zero = (torch.cat([parts[i][j] for i in range(expected)]) for j in range(3))
        form = q.int4_from_codes(codes, scale, zero)
        dense = q.int4_dequantize(codes, form)
        if not _agrees(dense, module.weight):
            report.dense.append(f"{module_name}: disagrees with the dequantized checkpoint")
            logger.warning("%s: GGUF blocks disagree with the checkpoint; kept dense", module_name)
            continue
        _install(module, module_name, (form, dense), report)
    return report, lm_head


def _lm_head_form(model, kind: str, raw: np.ndarray, tensor, report: QuantReport):
    from gguf.quants import dequantize

    weight = model.lm_head_weight
    owner = next((m for m in model.modules() if getattr(m, "weight", None) is weight), None)
    if kind in q.GGUF_INT8_TYPES:
        full = torch.from_numpy(dequantize(raw, tensor.tensor_type))
        form = q.quantize_int8(_rank_part(owner, (full,), None)[0])
        dense = q.int8_dequantize(form)
    elif kind in q.GGUF_INT4_TYPES:
        codes, scale, zero = _rank_part(owner, q.gguf_int4_codes(kind, raw), None)
        form = q.int4_from_codes(codes, scale, zero)
        dense = q.int4_dequantize(codes, form)
    else:
        report.dense.append(f"lm_head: GGUF type {kind}")
        return None
    if not _agrees(dense, weight):
        report.dense.append("lm_head: disagrees with the dequantized checkpoint")
        return None
    _set_dense(weight, dense)
    report.forms["lm_head"] = "int8" if isinstance(form, q.Int8Weight) else "int4"
    report.quant_bytes += form.nbytes
    return form


def _rank_part(
    module: Optional[nn.Module], tensors: tuple, shard: Optional[int]
) -> Optional[tuple]:
    """This rank's part of each of a GGUF tensor's codes / scales / zeros (all of them unless
    the module is tensor-parallel); None where the int4 groups do not split evenly."""
    cut = getattr(module, "shard_checkpoint", None)
    if cut is None:
        return tensors
    try:
        return tuple(cut(t, shard) for t in tensors)
    except ValueError:
        return None


def _hf_name(gguf_name: str) -> Optional[str]:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    m = _GGUF_BLOCK.fullmatch(gguf_name)
    if m is None or m.group(2) not in _GGUF_LAYER_NAMES:
        return None
    return f"model.layers.{m.group(1)}.{_GGUF_LAYER_NAMES[m.group(2)]}.weight"


def _module_of(hf_name: str, packed: dict) -> tuple[str, Optional[int]]:
    """Our module holding hf_name and its shard index in a fused projection."""
    for short, (fused, shard) in packed.items():
        if f".{short}." in hf_name:
            return hf_name.replace(f".{short}.", f".{fused}.").rsplit(".", 1)[0], shard
    return hf_name.rsplit(".", 1)[0], None


def _row_permutation(hf_name: str, rows: int, config, model) -> Optional[torch.Tensor]:
    """llama.cpp stores Llama's q/k rows in its own rotary order; transformers' reader undoes it
    (per head, rows [d/2, 2] -> [2, d/2]). Other architectures keep the checkpoint order."""
    if config.architecture not in ("LlamaForCausalLM", "MistralForCausalLM"):
        return None
    if hf_name.endswith("q_proj.weight"):
        heads = config.num_heads
    elif hf_name.endswith("k_proj.weight"):
        heads = config.num_kv_heads
    else:
        return None
    half = rows // heads // 2
    return torch.arange(rows).view(heads, half, 2).transpose(1, 2).reshape(-1)


def _agrees(ours: torch.Tensor, loaded: torch.Tensor) -> bool:
    loaded = loaded.detach().float()
    if ours.shape != loaded.shape:
        return False
    bound = _AGREEMENT * loaded.abs().amax(dim=1, keepdim=True).clamp(min=1e-6)
    return bool(((ours - loaded).abs() <= bound).all())
