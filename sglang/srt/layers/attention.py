"""Paged attention over MHATokenToKVPool in plain PyTorch: batched decode, per-request extend."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sglang.srt.layers import cpu_kernels
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

if TYPE_CHECKING:  # layers/ imports nothing from the packages above it at run time
    from sglang.srt.model_executor.forward_batch import ForwardBatch


class Attention(nn.Module):
    """One layer's attention over the paged KV cache; the pass's backend does the work."""

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        layer_id: int,
        scaling: Optional[float] = None,
        sliding_window: Optional[int] = None,
        logit_cap: Optional[float] = None,
    ) -> None:
        """scaling: of q.k (default head_dim ** -0.5); sliding_window: a query at position p
        sees the keys at positions p - sliding_window + 1 .. p (transformers' convention: the
        window counts the query's own token); logit_cap: scores become cap * tanh(s / cap)."""
        super().__init__()
        assert num_heads % num_kv_heads == 0, f"{num_heads} heads over {num_kv_heads} KV heads"
        if sliding_window is not None and sliding_window < 1:
            raise ValueError(f"sliding_window={sliding_window}: expected a positive size")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.layer_id = layer_id
        self.scaling = head_dim**-0.5 if scaling is None else float(scaling)
        self.sliding_window = sliding_window
        self.logit_cap = float(logit_cap) if logit_cap else None

    @property
    def plain(self) -> bool:
        """Full causal attention without soft-capping: what every fast path (the C++ decode
        kernel, the compiled step, SDPA) computes. Other layers take the masked torch paths."""
        return self.sliding_window is None and self.logit_cap is None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        # q: [T, H, D], k/v: [T, Hkv, D] -> [T, H * D]
        meta: AttnMetadata = forward_batch.attn_metadata
        return meta.backend.forward(q, k, v, self, forward_batch)


# DECODE gathers the K/V of at most this many padded tokens at once: a chunk's copies stay in
# cache for the matmuls that read them (15-20% faster at batch 64 x 300 than one gather), and
# the temporary memory stays bounded for large batches of long sequences.
DECODE_CHUNK_TOKENS = 4096


@dataclass
class DecodeChunk:
    """Requests lo..hi-1 of a DECODE pass, padded to the longest of them (width L)."""

    lo: int
    hi: int
    slots: torch.Tensor  # [(hi - lo) * L] int64 KV slots, row-major; padding reads slot 0
    bias: torch.Tensor  # [hi - lo, 1, 1, L] float32: 0 inside a sequence, -inf past its end


# EXTEND passes whose requests all add at most this many tokens (jump-forward runs, decode
# requests riding along) use the batched decode kernel instead of one SDPA call per request.
SHORT_EXTEND_TOKENS = 16


@dataclass
class PaddedExtend:
    """A short EXTEND pass laid out like decode: n query rows per request, padded."""

    slots: torch.Tensor  # [B * L] int64 KV slots, row-major; padding reads slot 0
    bias: torch.Tensor  # [B, 1, 1, n, L] float32: 0 where query j may see key l, else -inf
    gather: torch.Tensor  # [B * n] int64: the pass's token row of each padded query row
    scatter: torch.Tensor  # [T] int64: the padded row of each of the pass's tokens
    num_queries: int  # n: the longest extend of the pass
    query_pos: Optional[torch.Tensor] = None  # [B, n] int64: each padded query row's position


@dataclass
class ExtendSpan:
    """One request's new tokens in an EXTEND pass."""

    start: int  # offset of its first new token in the pass
    num_new: int
    # [L] int64 slots of the whole sequence; None: no prefix, plain causal over the new tokens
    kv_slots: Optional[torch.Tensor]
    # [num_new, L] bool, True = may attend; None: no mask (no prefix, or a single new token)
    mask: Optional[torch.Tensor]


@dataclass
class AttnMetadata:
    """Index tensors of one pass, built once by init_forward_metadata and read by every layer."""

    backend: TorchNativeAttnBackend
    chunks: Optional[list[DecodeChunk]] = None  # DECODE with the torch ops
    in_place: bool = False  # DECODE with the C++ kernel reading the pool in place
    spans: Optional[list[ExtendSpan]] = None  # EXTEND
    padded: Optional[PaddedExtend] = None  # EXTEND where every request adds few tokens
    # EXTEND, batch-invariant: each new token attends as a decode step would, through the C++
    # kernel: ([T] pool row of its request, [T] its position + 1)
    per_token: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    # DECODE through the C++ kernel: the torch-op chunks, built when a layer the kernel cannot
    # run (sliding window, soft-capping) first asks for them
    forward_batch: Optional[ForwardBatch] = None
    # per sliding-window size: the biases of `chunks` (DECODE) or of `padded`, with the
    # window's keys hidden too; built by the first layer with that window, reused by the rest
    windowed: dict[int, list[torch.Tensor]] = field(default_factory=dict)


class TorchNativeAttnBackend:
    """Attention over the token-slot KV pool with torch ops only (CPU and CUDA alike).

    NOTE: no per-layer host syncs: everything shaped by sequence lengths is built once per pass
    in init_forward_metadata from the CPU-side lists of the ForwardBatch.
    """

    def __init__(self, kv_pool: MHATokenToKVPool, batch_invariant: bool = False) -> None:
        self.kv_pool = kv_pool
        # the C++ decode kernel (layers/cpu_kernels) for a CPU pool, else None: torch ops
        self.kernels = cpu_kernels.load() if kv_pool.device.type == "cpu" else None
        # Every token's attention computed alike whatever its pass (prefill, chunk, decode) and
        # batch: the decode kernel, one query row at a time (--enable-deterministic-inference).
        self.batch_invariant = batch_invariant
        if batch_invariant and self.kernels is None:
            raise ValueError(
                "batch-invariant attention needs the C++ CPU kernels (a CPU KV pool with the "
                "kernels built)"
            )

    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        fb = forward_batch
        if fb.is_decode and self.kernels is not None:
            fb.attn_metadata = AttnMetadata(self, in_place=True, forward_batch=fb)
            return
        if self.batch_invariant:
            rows = fb.req_pool_indices.repeat_interleave(
                torch.tensor(fb.extend_seq_lens_cpu, device=fb.req_pool_indices.device)
            )
            fb.attn_metadata = AttnMetadata(self, per_token=(rows, fb.positions + 1))
            return
        width = max(fb.seq_lens_cpu)
        # [B, width] int64: KV slots of each request's tokens (stale past its length)
        slots = fb.req_to_token[:, :width].index_select(0, fb.req_pool_indices)
        if fb.is_decode:
            fb.attn_metadata = AttnMetadata(self, chunks=self._decode_chunks(fb, slots))
        elif _use_padded_extend(fb):
            fb.attn_metadata = AttnMetadata(self, padded=_padded_extend(fb, slots))
        else:
            fb.attn_metadata = AttnMetadata(self, spans=_extend_spans(fb, slots))

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Attention, fb: ForwardBatch
    ) -> torch.Tensor:
        # q: [T, H, D], k/v: [T, Hkv, D] -> [T, H * D]
        self.kv_pool.set_kv_buffer(layer.layer_id, fb.out_cache_loc, k, v)
        if not layer.plain:
            return self._forward_masked(q, k, v, layer, fb)
        if fb.attn_metadata.per_token is not None:
            rows, lens = fb.attn_metadata.per_token
            k_buf, v_buf = self.kv_pool.get_kv_buffer(layer.layer_id)
            return self.kernels.paged_decode_attention(
                q, k_buf, v_buf, fb.req_to_token, rows, lens, layer.scaling
            )
        if fb.attn_metadata.padded is not None:
            return self._extend_padded(q, layer, fb.attn_metadata.padded)
        if not fb.is_decode:
            return self._extend(q, k, v, layer, fb.attn_metadata)
        if fb.attn_metadata.in_place:
            k_buf, v_buf = self.kv_pool.get_kv_buffer(layer.layer_id)
            return self.kernels.paged_decode_attention(
                q, k_buf, v_buf, fb.req_to_token, fb.req_pool_indices, fb.seq_lens, layer.scaling
            )
        chunks = fb.attn_metadata.chunks
        if len(chunks) == 1:
            return self._decode(q, layer, chunks[0])
        out = q.new_empty(q.shape[0], q.shape[1] * q.shape[2])
        for c in chunks:
            out[c.lo : c.hi] = self._decode(q[c.lo : c.hi], layer, c)
        return out

    def _decode_chunks(
        self, fb: ForwardBatch, slots: Optional[torch.Tensor] = None
    ) -> list[DecodeChunk]:
        assert fb.num_tokens == fb.batch_size, "DECODE has one new token per request"
        if slots is None:
            width = max(fb.seq_lens_cpu)
            slots = fb.req_to_token[:, :width].index_select(0, fb.req_pool_indices)
        return [
            self._decode_chunk(fb, slots, lo, hi)
            for lo, hi in _chunk_bounds(fb.seq_lens_cpu, DECODE_CHUNK_TOKENS)
        ]

    def _forward_masked(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Attention, fb: ForwardBatch
    ) -> torch.Tensor:
        """A layer with a sliding window and/or soft-capped scores: the torch-op paths with the
        window in their masks and the cap on their scores (K/V already written to the pool)."""
        meta: AttnMetadata = fb.attn_metadata
        window = layer.sliding_window
        if meta.per_token is not None:
            raise ValueError(
                "batch-invariant attention (--enable-deterministic-inference) does not support "
                "sliding-window or soft-capped attention layers"
            )
        if meta.padded is not None:
            bias = meta.padded.bias
            if window is not None:
                if window not in meta.windowed:
                    meta.windowed[window] = [_window_padded_bias(meta.padded, window)]
                bias = meta.windowed[window][0]
            return self._extend_padded(q, layer, meta.padded, bias)
        if not fb.is_decode:
            return self._extend(q, k, v, layer, meta)
        if meta.chunks is None:  # the pass runs its plain layers through the C++ kernel
            meta.chunks = self._decode_chunks(meta.forward_batch)
        biases = [c.bias for c in meta.chunks]
        if window is not None:
            if window not in meta.windowed:
                meta.windowed[window] = [
                    _window_decode_bias(c, fb.seq_lens[c.lo : c.hi], window) for c in meta.chunks
                ]
            biases = meta.windowed[window]
        if len(meta.chunks) == 1:
            return self._decode(q, layer, meta.chunks[0], biases[0])
        out = q.new_empty(q.shape[0], q.shape[1] * q.shape[2])
        for c, bias in zip(meta.chunks, biases):
            out[c.lo : c.hi] = self._decode(q[c.lo : c.hi], layer, c, bias)
        return out

    def _decode_chunk(self, fb: ForwardBatch, slots: torch.Tensor, lo: int, hi: int) -> DecodeChunk:
        width = max(fb.seq_lens_cpu[lo:hi])
        chunk_slots, bias = _mask_padding(slots[lo:hi, :width], fb.seq_lens[lo:hi])
        return DecodeChunk(lo, hi, chunk_slots.reshape(-1), bias[:, None, None, :])

    def _decode(
        self,
        q: torch.Tensor,
        layer: Attention,
        chunk: DecodeChunk,
        bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        # One padded gather + two batched matmuls; K/V heads are shared by q-head groups
        # without repeating them. The CPU SDPA kernel is several times slower at these shapes.
        k_buf, v_buf = self.kv_pool.get_kv_buffer(layer.layer_id)
        batch, width = q.shape[0], chunk.bias.shape[-1]
        shape = (batch, width, layer.num_kv_heads, layer.head_dim)
        # Whole-token rows gather faster than per-head rows, even with the head-major copy after.
        keys = k_buf.index_select(0, chunk.slots).view(shape).transpose(1, 2).contiguous()
        values = v_buf.index_select(0, chunk.slots).view(shape).transpose(1, 2).contiguous()
        q = q.view(batch, layer.num_kv_heads, -1, layer.head_dim)  # [b, Hkv, G, D]
        scores = torch.matmul(q, keys.transpose(-1, -2))  # [b, Hkv, G, L]
        probs = _softmax(scores, chunk.bias if bias is None else bias, layer).to(q.dtype)
        return torch.matmul(probs, values).view(batch, -1)  # [b, H * D]

    def _extend_padded(
        self,
        q: torch.Tensor,
        layer: Attention,
        p: PaddedExtend,
        bias: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        # q: [T, H, D] -> [T, H * D]; the decode kernel with n query rows per request
        k_buf, v_buf = self.kv_pool.get_kv_buffer(layer.layer_id)
        batch, n, width = p.bias.shape[0], p.num_queries, p.bias.shape[-1]
        hkv, dim = layer.num_kv_heads, layer.head_dim
        group = layer.num_heads // hkv
        shape = (batch, width, hkv, dim)
        keys = k_buf.index_select(0, p.slots).view(shape).transpose(1, 2).contiguous()
        values = v_buf.index_select(0, p.slots).view(shape).transpose(1, 2).contiguous()
        qp = q.index_select(0, p.gather).view(batch, n, hkv, group, dim).permute(0, 2, 3, 1, 4)
        qp = qp.reshape(batch, hkv, group * n, dim)  # [B, Hkv, G n, D]
        scores = torch.matmul(qp, keys.transpose(-1, -2)).view(batch, hkv, group, n, width)
        probs = _softmax(scores, p.bias if bias is None else bias, layer).to(q.dtype)
        out = torch.matmul(probs.view(batch, hkv, group * n, width), values)  # [B, Hkv, G n, D]
        out = out.view(batch, hkv, group, n, dim).permute(0, 3, 1, 2, 4)
        return out.reshape(batch * n, -1).index_select(0, p.scatter)  # [T, H * D]

    def _extend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: Attention,
        meta: AttnMetadata,
    ) -> torch.Tensor:
        k_buf, v_buf = self.kv_pool.get_kv_buffer(layer.layer_id)
        out = torch.empty_like(q)  # [T, H, D]
        for span in meta.spans:
            new = slice(span.start, span.start + span.num_new)
            if span.kv_slots is None:
                keys, values = k[new], v[new]
            else:  # index_select: advanced indexing is tens of times slower here on CPU
                keys = k_buf.index_select(0, span.kv_slots)  # [L, Hkv, D]
                values = v_buf.index_select(0, span.kv_slots)
            if not layer.plain:
                out[new] = _attend_masked(q[new], keys, values, span, layer)
                continue
            o = F.scaled_dot_product_attention(
                q[new].transpose(0, 1).unsqueeze(0),  # [1, H, n, D]
                keys.transpose(0, 1).unsqueeze(0),  # [1, Hkv, L, D]
                values.transpose(0, 1).unsqueeze(0),
                attn_mask=span.mask,
                is_causal=span.kv_slots is None,
                scale=layer.scaling,
                enable_gqa=True,
            )
            out[new] = o[0].transpose(0, 1)
        return out.view(q.shape[0], -1)


@dataclass
class PagedDecodeMetadata:
    """A DECODE pass's KV slots as the compiled decode step reads them (set before each step)."""

    backend: "PagedDecodeBackend"
    slots: torch.Tensor  # [B, L] int64 KV slots of each request's tokens; padding reads slot 0
    bias: torch.Tensor  # [B, L] float32: 0 inside a sequence, -inf past its end
    # with the C++ kernel (then slots and bias are None): the pass's own index tensors
    req_to_token: Optional[torch.Tensor] = None
    req_pool_indices: Optional[torch.Tensor] = None
    seq_lens: Optional[torch.Tensor] = None


class PagedDecodeBackend:
    """Decode attention that reads the paged KV pool in place, for the compiled decode step.

    Written as products and sums over the gathered rows rather than matmuls over a gathered
    copy: inductor fuses the slot lookup into its reductions, so the K/V rows are read where
    they lie, once, without the padded copy the eager kernel makes. In eager mode the same code
    would materialize [B, H, L, D] products; it only runs compiled (model_executor/compiled.py).
    """

    def __init__(self, kv_pool: MHATokenToKVPool) -> None:
        self.kv_pool = kv_pool

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: Attention, fb
    ) -> torch.Tensor:
        # q: [B, H, D], k/v: [B, Hkv, D] -> [B, H * D]
        self.kv_pool.set_kv_buffer(layer.layer_id, fb.out_cache_loc, k, v)
        k_buf, v_buf = self.kv_pool.get_kv_buffer(layer.layer_id)
        meta: PagedDecodeMetadata = fb.attn_metadata
        if meta.seq_lens is not None:  # the C++ kernel, as an op inductor calls
            return torch.ops.sglang.paged_decode_attention(
                q,
                k_buf,
                v_buf,
                meta.req_to_token,
                meta.req_pool_indices,
                meta.seq_lens,
                layer.scaling,
            )
        return paged_decode_attention(q, k_buf, v_buf, meta.slots, meta.bias, layer.scaling)


@functools.lru_cache(maxsize=None)
def register_decode_op() -> bool:
    """torch.ops.sglang.paged_decode_attention: the C++ kernel as an op torch.compile can call
    (a graph node with a shape-only fake). False where the kernel is not built."""
    kernels = cpu_kernels.load()
    if kernels is None:
        return False

    @torch.library.custom_op("sglang::paged_decode_attention", mutates_args=())
    def _op(
        q: torch.Tensor,
        k_buf: torch.Tensor,
        v_buf: torch.Tensor,
        req_to_token: torch.Tensor,
        req_pool_indices: torch.Tensor,
        seq_lens: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        return kernels.paged_decode_attention(
            q, k_buf, v_buf, req_to_token, req_pool_indices, seq_lens, scale
        )

    @_op.register_fake
    def _(q, k_buf, v_buf, req_to_token, req_pool_indices, seq_lens, scale):
        return q.new_empty(q.shape[0], q.shape[1] * q.shape[2])

    return True


def paged_decode_attention(
    q: torch.Tensor,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    slots: torch.Tensor,
    bias: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """softmax(q K^T * scale + bias) V over each request's slots; q [B, H, D] -> [B, H * D].

    k_buf, v_buf: [S, Hkv, D] the pool; slots, bias: [B, L]. K/V heads serve H / Hkv q heads.
    """
    batch, heads, dim = q.shape
    hkv = k_buf.shape[1]
    qg = q.view(batch, hkv, heads // hkv, 1, dim).float()  # [B, Hkv, G, 1, D]
    keys = k_buf[slots].permute(0, 2, 1, 3)[:, :, None]  # [B, Hkv, 1, L, D]
    scores = (qg * keys.float()).sum(-1) * scale + bias[:, None, None, :]  # [B, Hkv, G, L]
    probs = scores.softmax(-1)
    values = v_buf[slots].permute(0, 2, 1, 3)[:, :, None]  # [B, Hkv, 1, L, D]
    out = (probs[..., None] * values.float()).sum(-2)  # [B, Hkv, G, D]
    return out.to(q.dtype).reshape(batch, heads * dim)


def decode_slots_and_bias(
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, width] KV slots with padding at slot 0, [B, width] float32 bias) of a DECODE pass."""
    return _mask_padding(req_to_token[:, :width].index_select(0, req_pool_indices), seq_lens)


def _mask_padding(slots: torch.Tensor, seq_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """slots [B, L] with positions past each length pointed at slot 0, and the [B, L] float32
    bias that hides them (0 inside a sequence, -inf past its end)."""
    inside = torch.arange(slots.shape[1], device=slots.device)[None, :] < seq_lens[:, None]
    bias = torch.zeros(inside.shape, dtype=torch.float32, device=slots.device)
    return slots.masked_fill(~inside, 0), bias.masked_fill(~inside, float("-inf"))


def _use_padded_extend(fb: ForwardBatch) -> bool:
    """Short extends batch like decode. Passes that score input logprobs (select) keep the
    prefill kernel, whose fp32 accumulation makes scores agree with a full prefill's."""
    short = max(fb.extend_seq_lens_cpu) <= SHORT_EXTEND_TOKENS
    return fb.batch_size > 1 and short and not fb.return_logprob


def _padded_extend(fb: ForwardBatch, slots: torch.Tensor) -> PaddedExtend:
    device = slots.device
    n = max(fb.extend_seq_lens_cpu)
    keys = torch.arange(slots.shape[1], device=device)
    inside = keys[None, :] < fb.seq_lens[:, None]  # [B, L]
    prefix = torch.tensor(fb.extend_prefix_lens_cpu, device=device)
    query_pos = prefix[:, None] + torch.arange(n, device=device)[None, :]  # [B, n]
    # Padded query rows (j >= the request's new tokens) see the whole sequence: no empty rows.
    allowed = inside[:, None, :] & (keys[None, None, :] <= query_pos[:, :, None])  # [B, n, L]
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=device)
    bias = bias.masked_fill(~allowed, float("-inf"))[:, None, None]
    gather: list[int] = []
    scatter: list[int] = []
    start = 0
    for i, m in enumerate(fb.extend_seq_lens_cpu):
        gather += list(range(start, start + m)) + [start] * (n - m)
        scatter += range(i * n, i * n + m)
        start += m
    return PaddedExtend(
        slots.masked_fill(~inside, 0).reshape(-1),
        bias,
        torch.tensor(gather, dtype=torch.int64, device=device),
        torch.tensor(scatter, dtype=torch.int64, device=device),
        n,
        query_pos,
    )


def _extend_spans(fb: ForwardBatch, slots: torch.Tensor) -> list[ExtendSpan]:
    spans, start = [], 0
    for i, (num_new, prefix) in enumerate(zip(fb.extend_seq_lens_cpu, fb.extend_prefix_lens_cpu)):
        total = prefix + num_new
        if prefix == 0:
            spans.append(ExtendSpan(start, num_new, None, None))
        elif num_new == 1:
            spans.append(ExtendSpan(start, num_new, slots[i, :total], None))
        else:
            keys = torch.arange(total, device=slots.device)
            queries = torch.arange(prefix, total, device=slots.device)
            mask = keys[None, :] <= queries[:, None]  # [n, L]: the prefix and earlier new tokens
            spans.append(ExtendSpan(start, num_new, slots[i, :total], mask))
        start += num_new
    return spans


def _chunk_bounds(seq_lens: list[int], max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive request ranges [lo, hi) whose padded size (count x longest) fits max_tokens."""
    bounds, lo, longest = [], 0, 0
    for i, n in enumerate(seq_lens):
        longest = max(longest, n)
        if i > lo and (i - lo + 1) * longest > max_tokens:
            bounds.append((lo, i))
            lo, longest = i, n
    bounds.append((lo, len(seq_lens)))
    return bounds


def _softmax(scores: torch.Tensor, bias: torch.Tensor, layer: Attention) -> torch.Tensor:
    """float32 softmax(scaling * scores, capped where the layer caps them, + bias)."""
    if layer.logit_cap is None:
        # bias + scaling * scores promotes to float32 in one op
        return torch.add(bias, scores, alpha=layer.scaling).softmax(-1)
    cap = layer.logit_cap
    capped = torch.tanh(scores.float() * (layer.scaling / cap)) * cap
    return (capped + bias).softmax(-1)


def _attend_masked(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, span: ExtendSpan, layer: Attention
) -> torch.Tensor:
    """One request's new tokens q [n, H, D] over keys/values [L, Hkv, D] (the prefix, then the
    new tokens), causal, within the layer's window, scores capped -> [n, H, D]."""
    n, heads, dim = q.shape
    total, hkv = keys.shape[0], keys.shape[1]
    key_pos = torch.arange(total, device=q.device)
    query_pos = key_pos[total - n :]
    allowed = key_pos[None, :] <= query_pos[:, None]  # [n, L]
    if layer.sliding_window is not None:
        allowed &= key_pos[None, :] > query_pos[:, None] - layer.sliding_window
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=q.device)
    bias = bias.masked_fill(~allowed, float("-inf"))
    qg = (
        q.view(n, hkv, heads // hkv, dim).permute(1, 2, 0, 3).reshape(hkv, -1, dim)
    )  # [Hkv, G n, D]
    scores = torch.matmul(qg, keys.permute(1, 2, 0))  # [Hkv, G n, L]
    scores = scores.view(hkv, heads // hkv, n, total)
    probs = _softmax(scores, bias, layer).to(q.dtype)
    out = torch.matmul(probs.view(hkv, -1, total), values.transpose(0, 1))  # [Hkv, G n, D]
    return out.view(hkv, heads // hkv, n, dim).permute(2, 0, 1, 3).reshape(n, heads, dim)


def _window_decode_bias(chunk: DecodeChunk, seq_lens: torch.Tensor, window: int) -> torch.Tensor:
    """A DECODE chunk's bias [b, 1, 1, L] with the keys before the window hidden too (the new
    token is at position seq_len - 1, so it sees positions seq_len - window .. seq_len - 1)."""
    width = chunk.bias.shape[-1]
    keys = torch.arange(width, device=chunk.bias.device)
    before = keys[None, :] < (seq_lens[:, None] - window)  # [b, L]
    return chunk.bias.masked_fill(before[:, None, None, :], float("-inf"))


def _window_padded_bias(p: PaddedExtend, window: int) -> torch.Tensor:
    """A short EXTEND's bias [B, 1, 1, n, L] with the keys before each query's window hidden.
    Padded query rows (past a request's new tokens) keep at least their own position's key."""
    width = p.bias.shape[-1]
    keys = torch.arange(width, device=p.bias.device)
    before = keys[None, None, :] <= p.query_pos[:, :, None] - window  # [B, n, L]
    return p.bias.masked_fill(before[:, None, None], float("-inf"))
