"""Qwen2-VL and Qwen2.5-VL: a vision transformer over image patches, a patch merger, and the
Qwen2 decoder with M-RoPE (multimodal rotary positions).

Vision: each image arrives as patches [N, C * temporal_patch * patch * patch] in merge-block
order (the processor's layout: each merge x merge block of neighbouring patches is contiguous).
The patch embedding is a linear map (a Conv3d whose kernel equals its stride); the blocks use
a 2D rotary embedding (half the head's rotary channels turn with the patch row, half with its
column) and attend within each image (Qwen2.5-VL: within windows of window_size pixels, except
in fullatt_block_indexes); the merger concatenates each merge x merge block into one vector
and maps it to the decoder's width: one image position per block.

Decoder: our Qwen2 layers with the rotary angles of each channel group taken from one of the
token's three positions (t, h, w), `mrope_section` giving the groups' sizes; see
multimodal/mrope.py for the positions. The runner's 1-D positions are turned into 3-D ones
from each request's images; a request without images gets its 1-D positions in all three.
Images are encoded in the extend pass that first reaches them, their features kept until the
prefill has passed them (as in llava.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.configs.model_config import ModelConfig
from sglang.srt.layers.rotary import Rope
from sglang.srt.model_executor.forward_batch import ForwardBatch
from sglang.srt.models.clip import activation
from sglang.srt.models.qwen2 import Qwen2ForCausalLM
from sglang.srt.multimodal.inputs import ImageItem, MultimodalInputs
from sglang.srt.multimodal.mrope import mrope_delta, mrope_positions

_VISION_PREFIX = "visual."
# checkpoint prefix -> ours: transformers 5 saves model.visual.* / model.language_model.*,
# the original checkpoints visual.* / model.*
_RENAMES = (
    ("model.visual.", "visual."),
    ("model.language_model.", "model."),
)


def read_hf_config(path: str) -> dict[str, Any]:
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        return json.load(f)


# ---- the vision transformer ---------------------------------------------------------------


@dataclass(frozen=True)
class QwenVisionConfig:
    """The facts of a Qwen2-VL / Qwen2.5-VL `vision_config` the tower needs."""

    depth: int
    hidden_size: int  # the tower's width
    intermediate_size: int
    num_heads: int
    hidden_act: str
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    out_hidden_size: int  # the decoder's width
    rope_theta: float
    qwen2_5: bool  # RMSNorm, gated MLP, windowed attention
    window_size: int = 0  # pixels; Qwen2.5-VL only
    fullatt_block_indexes: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], qwen2_5: bool) -> QwenVisionConfig:
        common = dict(
            depth=int(cfg.get("depth", 32)),
            num_heads=int(cfg.get("num_heads", 16)),
            in_channels=int(cfg.get("in_channels", cfg.get("in_chans", 3))),
            patch_size=int(cfg.get("patch_size", 14)),
            temporal_patch_size=int(cfg.get("temporal_patch_size", 2)),
            merge_size=int(cfg.get("spatial_merge_size", 2)),
            rope_theta=float((cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)),
        )
        if qwen2_5:
            return cls(
                hidden_size=int(cfg.get("hidden_size", 1280)),
                intermediate_size=int(cfg.get("intermediate_size", 3420)),
                hidden_act=cfg.get("hidden_act", "silu"),
                out_hidden_size=int(cfg.get("out_hidden_size", 3584)),
                qwen2_5=True,
                window_size=int(cfg.get("window_size", 112)),
                fullatt_block_indexes=tuple(cfg.get("fullatt_block_indexes", (7, 15, 23, 31))),
                **common,
            )
        embed = int(cfg.get("embed_dim", 1280))
        return cls(
            hidden_size=embed,
            intermediate_size=int(embed * cfg.get("mlp_ratio", 4)),
            hidden_act=cfg.get("hidden_act", "quick_gelu"),
            out_hidden_size=int(cfg.get("hidden_size", 3584)),
            qwen2_5=False,
            **common,
        )


class VisionRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, D]; normalized in float32, scaled in x's dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def _norm(cfg: QwenVisionConfig, dim: int) -> nn.Module:
    return VisionRMSNorm(dim) if cfg.qwen2_5 else nn.LayerNorm(dim, eps=1e-6)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: QwenVisionConfig) -> None:
        super().__init__()
        kernel = (cfg.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        # stored as the checkpoint's Conv3d [D, C, tp, p, p]; applied as one matmul
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel, stride=kernel, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels: [N, C * tp * p * p] -> [N, D]
        w = self.proj.weight
        return F.linear(pixels.to(w.dtype), w.reshape(w.shape[0], -1))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class VisionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seqlens: list[int]
    ) -> torch.Tensor:
        # x: [N, D]; cos, sin: [N, Dh] float32; full attention within each run of seqlens
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, -1).unbind(1)  # [N, H, Dh] each
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)  # [N, 1, Dh]
        q = (q.float() * c + rotate_half(q.float()) * s).to(x.dtype)
        k = (k.float() * c + rotate_half(k.float()) * s).to(x.dtype)
        outs = []
        for qs, ks, vs in zip(q.split(seqlens), k.split(seqlens), v.split(seqlens)):
            # [H, S, Dh] each
            out = F.scaled_dot_product_attention(
                qs.transpose(0, 1), ks.transpose(0, 1), vs.transpose(0, 1)
            )
            outs.append(out.transpose(0, 1))  # [S, H, Dh]
        return self.proj(torch.cat(outs).reshape(n, -1))


class VisionMLP(nn.Module):
    """Qwen2-VL: fc1 -> activation -> fc2."""

    def __init__(self, cfg: QwenVisionConfig) -> None:
        super().__init__()
        self.act = cfg.hidden_act
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activation(self.act, self.fc1(x)))


class VisionGatedMLP(nn.Module):
    """Qwen2.5-VL: down(act(gate(x)) * up(x)), with biases."""

    def __init__(self, cfg: QwenVisionConfig) -> None:
        super().__init__()
        self.act = cfg.hidden_act
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(activation(self.act, self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nn.Module):
    def __init__(self, cfg: QwenVisionConfig) -> None:
        super().__init__()
        self.norm1 = _norm(cfg, cfg.hidden_size)
        self.norm2 = _norm(cfg, cfg.hidden_size)
        self.attn = VisionAttention(cfg.hidden_size, cfg.num_heads)
        self.mlp = VisionGatedMLP(cfg) if cfg.qwen2_5 else VisionMLP(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seqlens: list[int]
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, seqlens)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    def __init__(self, cfg: QwenVisionConfig) -> None:
        super().__init__()
        self.width = cfg.hidden_size * cfg.merge_size**2
        self.ln_q = _norm(cfg, cfg.hidden_size)
        self.mlp = nn.Sequential(
            nn.Linear(self.width, self.width), nn.GELU(), nn.Linear(self.width, cfg.out_hidden_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [N, D], merge blocks contiguous -> [N / merge^2, out_hidden]
        return self.mlp(self.ln_q(x).view(-1, self.width))


class QwenVisionTransformer(nn.Module):
    """patches [N, C * tp * p * p] of images with patch grids `grids` -> [N / merge^2, out]."""

    def __init__(self, cfg: QwenVisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(VisionBlock(cfg) for _ in range(cfg.depth))
        self.merger = PatchMerger(cfg)
        head_dim = cfg.hidden_size // cfg.num_heads
        quarter = head_dim // 2  # rotary frequencies: head_dim / 4 for rows, as many for columns
        inv_freq = 1.0 / (
            cfg.rope_theta ** (torch.arange(0, quarter, 2, dtype=torch.float32) / quarter)
        )
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [Dh / 4]

    def forward(self, pixels: torch.Tensor, grids: list[tuple[int, int, int]]) -> torch.Tensor:
        cfg, unit = self.config, self.config.merge_size**2
        x = self.patch_embed(pixels)  # [N, D]
        cos, sin = self.rotary(grids, x.device)  # [N, Dh] float32 each
        frames = [h * w for t, h, w in grids for _ in range(t)]  # full attention per frame
        windows, order = frames, None
        if cfg.qwen2_5:
            order, windows = window_layout(grids, cfg.merge_size, cfg.window_size, cfg.patch_size)
            order = order.to(x.device)
            n = x.shape[0]
            x = x.view(n // unit, unit, -1)[order].reshape(n, -1)
            cos = cos.view(n // unit, unit, -1)[order].reshape(n, -1)
            sin = sin.view(n // unit, unit, -1)[order].reshape(n, -1)
        for i, block in enumerate(self.blocks):
            full = not cfg.qwen2_5 or i in cfg.fullatt_block_indexes
            x = block(x, cos, sin, frames if full else windows)
        merged = self.merger(x)  # [N / merge^2, out]
        if order is not None:
            merged = merged[torch.argsort(order)]
        return merged

    def rotary(
        self, grids: list[tuple[int, int, int]], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [N, Dh] float32 of each patch's (row, column) in its image, patches in
        merge-block order."""
        m = self.config.merge_size
        rows = []
        for t, h, w in grids:
            hpos = torch.arange(h).view(h, 1).expand(h, w)
            wpos = torch.arange(w).view(1, w).expand(h, w)
            blocks = (h // m, m, w // m, m)
            hpos = hpos.reshape(blocks).transpose(1, 2).flatten()
            wpos = wpos.reshape(blocks).transpose(1, 2).flatten()
            rows.append(torch.stack([hpos, wpos], dim=-1).repeat(t, 1))  # [t*h*w, 2]
        pos = torch.cat(rows).to(device)  # [N, 2]
        freqs = pos.unsqueeze(-1).float() * self.inv_freq  # [N, 2, Dh / 4]
        freqs = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1)  # [N, Dh / 2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [N, Dh]
        return emb.cos(), emb.sin()


def window_layout(
    grids: list[tuple[int, int, int]], merge: int, window_size: int, patch_size: int
) -> tuple[torch.Tensor, list[int]]:
    """Qwen2.5-VL's attention windows: (the merge blocks' order, [N / merge^2] int64 indices
    into the blocks in processor order; the windows' lengths in patches, in that order).

    Each frame's grid of merge blocks is cut into squares of window_size // merge // patch
    blocks (smaller at the bottom and right edges), taken row by row; blocks row by row inside."""
    side = window_size // merge // patch_size
    order, lengths, base = [], [], 0
    for t, h, w in grids:
        gh, gw = h // merge, w // merge
        cells = torch.arange(t * gh * gw).view(t, gh, gw) + base
        for f in range(t):
            for top in range(0, gh, side):
                for left in range(0, gw, side):
                    block = cells[f, top : top + side, left : left + side].flatten()
                    order.append(block)
                    lengths.append(block.numel() * merge * merge)
        base += t * gh * gw
    return torch.cat(order), lengths


# ---- the decoder's M-RoPE ---------------------------------------------------------------


class MRotaryEmbedding(nn.Module):
    """cos/sin tables of positions 0..max_position-1; channel group g of the rotary half (sizes
    mrope_section) takes its angle from position component g % 3 (t, h, w)."""

    def __init__(
        self,
        head_dim: int,
        max_position: int,
        base: float,
        section: list[int],
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        if sum(section) != head_dim // 2:
            raise ValueError(
                f"mrope_section {section} must add up to head_dim / 2 = {head_dim // 2}"
            )
        self.dtype = dtype
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float32), inv_freq)
        self.register_buffer("cos_half", freqs.cos(), persistent=False)  # [P, Dh / 2] float32
        self.register_buffer("sin_half", freqs.sin(), persistent=False)
        component = torch.cat(
            [torch.full((size,), g % 3, dtype=torch.int64) for g, size in enumerate(section)]
        )
        self.register_buffer("component", component, persistent=False)  # [Dh / 2]

    def lookup(self, positions: torch.Tensor) -> Rope:
        # positions: [3, T] int64 (t, h, w) -> the pass's rotation, applied by each layer
        t = positions.shape[1]
        pick = self.component.view(1, 1, -1).expand(1, t, -1)  # [1, T, Dh / 2]
        cos = self.cos_half[positions].gather(0, pick)[0]  # [T, Dh / 2]
        sin = self.sin_half[positions].gather(0, pick)[0]
        # NOTE: the layers rotate as roll(x, Dh / 2) * [-sin | sin] (see layers/rotary.py)
        cos = torch.cat([cos, cos], -1).to(self.dtype).unsqueeze(1)  # [T, 1, Dh]
        sin = torch.cat([-sin, sin], -1).to(self.dtype).unsqueeze(1)
        return Rope(cos=cos, sin=sin)


def _mrope_section(hf: dict[str, Any]) -> list[int]:
    for key in ("rope_parameters", "rope_scaling"):
        params = hf.get(key) or {}
        if params.get("mrope_section"):
            return [int(v) for v in params["mrope_section"]]
    return [16, 24, 24]


# ---- the model ----------------------------------------------------------------------------


class Qwen2VLForConditionalGeneration(Qwen2ForCausalLM):
    qwen2_5 = False

    def __init__(self, config: ModelConfig) -> None:
        hf = read_hf_config(config.path)
        # the decoder's rotary is M-RoPE, built here; rope_scaling only names it
        config = dataclasses.replace(config, rope_scaling=None)
        super().__init__(config)
        self.vision = QwenVisionConfig.from_dict(hf.get("vision_config") or {}, self.qwen2_5)
        self.merge = self.vision.merge_size
        self.visual = QwenVisionTransformer(self.vision)
        self.model.rotary = MRotaryEmbedding(
            config.head_dim,
            config.context_len,
            config.rope_theta,
            _mrope_section(config.hf),
            config.dtype,
        )

    # ---- the pass -------------------------------------------------------------------------

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        # input_ids, positions: [T] -> hidden states [T, hidden]
        if not isinstance(forward_batch, ForwardBatch):
            # the compiled decode step passes no requests' images: their M-RoPE offsets would
            # be lost (the runner then decodes eagerly)
            raise TypeError("Qwen2-VL needs each pass's ForwardBatch for its M-RoPE positions")
        fb = forward_batch
        embeds = None
        if fb.mm_inputs is not None and any(_overlaps(mm, s, n) for mm, s, n in _chunks(fb)):
            embeds = self.embed_with_images(input_ids, fb)
        return self.model(input_ids, self.mrope_positions(positions, fb), fb, input_embeds=embeds)

    def mrope_positions(self, positions: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        """The pass's 1-D positions [T] -> (t, h, w) positions [3, T]."""
        mms = fb.mm_inputs
        if mms is None or all(mm is None or not mm.images for mm in mms):
            return positions.unsqueeze(0).expand(3, -1)
        parts = []
        for mm, pos in zip(mms, positions.split(fb.extend_seq_lens_cpu)):
            parts.append(self._request_positions(mm, pos))
        return torch.cat(parts, dim=1)

    def _request_positions(self, mm: Optional[MultimodalInputs], pos: torch.Tensor) -> torch.Tensor:
        # pos: [L] one request's 1-D positions -> [3, L]
        if mm is None or not mm.images:
            return pos.unsqueeze(0).expand(3, -1)
        if mm.mrope_delta is None:
            mm.mrope_delta = mrope_delta(mm.images, self.merge)
        if int(pos[0]) >= mm.images[-1].end:  # past every image (decode): 1-D + delta
            return (pos + mm.mrope_delta).unsqueeze(0).expand(3, -1)
        return mrope_positions(mm.images, pos, self.merge)

    def embed_with_images(self, input_ids: torch.Tensor, fb: ForwardBatch) -> torch.Tensor:
        """Token embeddings [T, hidden] with each image position's feature put in its place."""
        x = self.model.embed_tokens(input_ids)
        spans = _image_spans(fb)
        self._encode([im for *_, im in spans if im.features is None])
        for start, end, flat, im in spans:
            lo, hi = max(im.offset, start), min(im.end, end)  # the image's part in the chunk
            feats = im.features[lo - im.offset : hi - im.offset]
            x[flat + lo - start : flat + hi - start] = feats.to(x.dtype)
        for mm, start, length in _chunks(fb):
            if mm is not None:
                mm.drop_features_before(start + length)
        return x

    def _encode(self, images: list[ImageItem]) -> None:
        """Features [num_tokens, hidden] of all images at once: one tower call."""
        if not images:
            return
        device = self.model.embed_tokens.weight.device
        pixels = torch.cat([im.pixel_values for im in images]).to(device)  # [N, C*tp*p*p]
        grids = [im.grid_thw for im in images]
        assert all(g is not None for g in grids), "a Qwen2-VL image needs its patch grid"
        feats = self.visual(pixels, grids)  # [sum num_tokens, hidden]
        for im, per_image in zip(images, feats.split([im.num_tokens for im in images])):
            im.features = per_image

    # ---- weights ----------------------------------------------------------------------------

    def load_checkpoint(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """The decoder's weights through the shared loader (fusing q/k/v and gate/up), the
        tower's one to one by name."""
        from sglang.srt.model_loader.loader import load_weights  # the loader imports the models

        text, vision = [], []
        for name, tensor in weights:
            if name.endswith("inv_freq"):
                continue
            name = _our_name(name)
            (vision if name.startswith(_VISION_PREFIX) else text).append((name, tensor))
        params = dict(self.named_parameters())
        is_vision = {n: n.startswith(_VISION_PREFIX) for n in params}
        load_weights(self, text, {n: p for n, p in params.items() if not is_vision[n]})
        load_weights(self, vision, {n: p for n, p in params.items() if is_vision[n]}, packed={})


class Qwen2_5_VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    """Qwen2.5-VL: RMSNorm and a gated MLP in the tower, windowed attention in the blocks not
    listed in fullatt_block_indexes; the same decoder."""

    qwen2_5 = True


def _our_name(name: str) -> str:
    for old, new in _RENAMES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def _chunks(fb: ForwardBatch) -> Iterable[tuple[Optional[MultimodalInputs], int, int]]:
    """(request's MultimodalInputs or None, chunk start, chunk length) per request."""
    assert fb.mm_inputs is not None
    return zip(fb.mm_inputs, fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu)


def _overlaps(mm: Optional[MultimodalInputs], start: int, length: int) -> bool:
    return mm is not None and bool(mm.overlapping(start, start + length))


def _image_spans(fb: ForwardBatch) -> list[tuple[int, int, int, ImageItem]]:
    """(chunk start, chunk end, the chunk's first row in the pass, image) of each image that
    has positions in the pass."""
    spans, flat = [], 0
    for mm, start, length in _chunks(fb):
        if mm is not None:
            end = start + length
            spans += [(start, end, flat, im) for im in mm.overlapping(start, end)]
        flat += length
    return spans
