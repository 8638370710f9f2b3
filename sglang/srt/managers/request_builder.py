"""Turning a /generate body into validated, tokenized requests for the scheduler.

Every check that needs no model runs here, so bad input gets its 400 before anything is sent.
A grammar is only checked for kind and shape here; the scheduler compiles it (once) and ends
the request as invalid if it does not compile, which the tokenizer manager answers with a 400.
"""

from __future__ import annotations

import copy
import dataclasses
import uuid
from typing import TYPE_CHECKING, Any, Optional

from sglang.srt.managers.io_struct import GenerateReqInput, TokenizedGenerateReqInput
from sglang.srt.sampling.sampling_params import SamplingParams

if TYPE_CHECKING:
    from sglang.srt.managers.tokenizer_manager import TokenizerManager

Prompt = tuple[Optional[str], Optional[list[int]]]  # (text, None) or (None, token ids)
NOT_A_GENERATION_SERVER = (
    "this server serves an embedding model (--is-embedding): it does not generate; "
    "use /encode or /v1/embeddings"
)


class RequestBuilder:
    """Validates and tokenizes /generate bodies against one tokenizer manager's model facts."""

    def __init__(self, tm: TokenizerManager) -> None:
        self.tm = tm

    def build(self, obj: GenerateReqInput) -> tuple[list[TokenizedGenerateReqInput], bool]:
        """The requests of a body (a batch or n > 1 gives several) and whether it is a batch."""
        prompts, is_batch = self._prompts(obj)
        rids = _base_rids(obj.rid, len(prompts), is_batch)
        images = prompt_images(obj.image_data, len(prompts), is_batch)
        reqs: list[TokenizedGenerateReqInput] = []
        for i, (text, ids) in enumerate(prompts):
            params = self._sampling_params(
                _pick(obj.sampling_params, "sampling_params", i, prompts)
            )
            if text is not None:
                ids = self.tm.tokenize(text)
            mm = None
            if images[i]:
                ids, mm = self._with_images(ids, images[i])
            ids = self._check_ids(ids, params)
            if params.n > 1:
                is_batch = True
            for j, copy_params in enumerate(_expand_n(params)):
                rid = rids[i] if params.n == 1 else f"{rids[i]}_{j}"
                reqs.append(self._make_req(obj, i, prompts, rid, text, ids, copy_params, mm))
        self._check_rids_free(reqs)
        return reqs, is_batch

    def _prompts(self, obj: GenerateReqInput) -> tuple[list[Prompt], bool]:
        if not self.tm.is_generation:
            raise ValueError(NOT_A_GENERATION_SERVER)
        if obj.image_data and self.tm.image_processor is None:
            raise ValueError("image_data: the served model does not take images")
        if (obj.text is None) == (obj.input_ids is None):
            raise ValueError("give exactly one of text and input_ids")
        if obj.text is not None:
            return _text_prompts(obj.text)
        return _ids_prompts(obj.input_ids)

    def _with_images(self, ids: Optional[list[int]], sources: list[Any]) -> tuple[list[int], Any]:
        """The prompt with its image tokens expanded, and the preprocessed images."""
        from sglang.srt.multimodal.image_loader import load_image

        assert ids is not None and self.tm.image_processor is not None
        allowed = self.tm.allowed_media_dirs
        loaded = [load_image(s, allowed) for s in sources]
        ids, mm = self.tm.image_processor.expand(list(ids), loaded)
        if len(ids) >= self.tm.context_len:
            taken = sum(im.num_tokens for im in mm.images)
            raise ValueError(
                f"the prompt with its {len(loaded)} image(s) takes {len(ids)} positions "
                f"({taken} for the images), not less than the context length "
                f"({self.tm.context_len} tokens)"
            )
        return ids, mm

    def _sampling_params(self, raw: Any) -> SamplingParams:
        params = SamplingParams.from_dict(copy.deepcopy(raw))
        if params.stop_token_ids:
            self.check_vocab(params.stop_token_ids, "stop_token_ids")
        if params.logit_bias:
            self.check_vocab(list(params.logit_bias_ids()), "logit_bias")
        if params.grammar is not None and self.tm.server_args.grammar_backend == "none":
            raise ValueError(
                f"{params.grammar[0]}: constrained decoding is disabled "
                "(server started with --grammar-backend none)"
            )
        return params

    def _check_ids(self, ids: Optional[list[int]], params: SamplingParams) -> list[int]:
        """Check prompt ids against vocabulary, context and KV pool; clip max_new_tokens."""
        assert ids is not None
        if not ids:
            raise ValueError("the prompt is empty (0 tokens)")
        self.check_vocab(ids, "input_ids")
        n, context = len(ids), self.tm.context_len
        if n >= context:
            raise ValueError(
                f"the prompt has {n} tokens, which is not less than the context length "
                f"({context} tokens)"
            )
        ready = self.tm.ready_info
        pool = ready.max_total_tokens if ready else n + 1
        if n >= pool:
            raise ValueError(
                f"the prompt has {n} tokens, which does not fit the KV cache ({pool} tokens)"
            )
        params.max_new_tokens = min(params.max_new_tokens, context - n, pool - n)
        params.min_new_tokens = min(params.min_new_tokens, params.max_new_tokens)
        return ids

    def check_vocab(self, ids: Any, name: str) -> None:
        vocab = self.tm.vocab_size
        for t in ids:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab:
                raise ValueError(f"{name} contains {t!r}, not a token id in [0, {vocab})")

    def _make_req(
        self,
        obj: GenerateReqInput,
        i: int,
        prompts: list,
        rid: str,
        text: Optional[str],
        ids: list[int],
        params: SamplingParams,
        mm: Any = None,
    ) -> TokenizedGenerateReqInput:
        # NOTE: null means the default, as in SGLang (whose clients send these as null).
        return_logprob = _or(_pick(obj.return_logprob, "return_logprob", i, prompts), False)
        start = _or(_pick(obj.logprob_start_len, "logprob_start_len", i, prompts), -1)
        top = _or(_pick(obj.top_logprobs_num, "top_logprobs_num", i, prompts), 0)
        _check_logprob_args(return_logprob, start, top, len(ids), self.tm.vocab_size)
        if not isinstance(obj.stream, bool):
            raise ValueError(f"stream must be a boolean, got {obj.stream!r}")
        return TokenizedGenerateReqInput(
            rid=rid,
            input_text=text,
            input_ids=ids,
            sampling_params=params,
            return_logprob=return_logprob,
            logprob_start_len=start if return_logprob else -1,
            top_logprobs_num=top if return_logprob else 0,
            stream=obj.stream,
            mm_inputs=mm,
        )

    def _check_rids_free(self, reqs: list[TokenizedGenerateReqInput]) -> None:
        seen: set[str] = set()
        for req in reqs:
            if req.rid in self.tm.rid_to_state or req.rid in seen:
                raise ValueError(f"rid {req.rid!r} is already in use")
            seen.add(req.rid)


def _text_prompts(text: Any) -> tuple[list[tuple[Optional[str], None]], bool]:
    if isinstance(text, str):
        texts, is_batch = [text], False
    elif isinstance(text, list) and text:
        texts, is_batch = text, True
    else:
        raise ValueError(f"text must be a string or a non-empty list of strings, got {text!r}")
    for t in texts:
        if not isinstance(t, str):
            raise ValueError(f"text must be a string or a list of strings; found {t!r}")
        if t == "":
            raise ValueError("text is empty")
    return [(t, None) for t in texts], is_batch


def _ids_prompts(ids: Any) -> tuple[list[tuple[None, Optional[list[int]]]], bool]:
    if not isinstance(ids, list) or not ids:
        raise ValueError("input_ids must be a non-empty list of token ids (or of lists of them)")
    if isinstance(ids[0], list):
        for row in ids:
            if not isinstance(row, list):
                raise ValueError(f"input_ids: expected a list of token ids, got {row!r}")
        return [(None, list(row)) for row in ids], True
    return [(None, list(ids))], False


def prompt_images(image_data: Any, count: int, is_batch: bool) -> list[list[Any]]:
    """Each prompt's image_data entries: one image or a list of them for a single prompt; for a
    batch, a list with one entry (None, one image or a list) per prompt."""
    if not image_data:
        return [[] for _ in range(count)]
    if not is_batch:
        return [image_data if isinstance(image_data, list) else [image_data]]
    if not isinstance(image_data, list) or len(image_data) != count:
        raise ValueError(
            f"image_data of a batch of {count} prompts must be a list of {count} entries "
            "(each None, one image or a list of images)"
        )
    return [[] if e is None else e if isinstance(e, list) else [e] for e in image_data]


def _pick(value: Any, name: str, i: int, prompts: list) -> Any:
    """The i-th prompt's value of a field given once for all prompts or as a per-prompt list."""
    if not isinstance(value, list):
        return value
    if len(value) != len(prompts):
        raise ValueError(f"{name} has {len(value)} entries for {len(prompts)} prompts")
    return value[i]


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _base_rids(rid: Any, count: int, is_batch: bool) -> list[str]:
    if rid is None:
        return [uuid.uuid4().hex for _ in range(count)]
    if isinstance(rid, str) and rid:
        return [rid] if not is_batch else [f"{rid}_{i}" for i in range(count)]
    if isinstance(rid, list) and len(rid) == count and all(isinstance(r, str) and r for r in rid):
        return list(rid)
    raise ValueError(f"rid must be a non-empty string or a list of {count} of them, got {rid!r}")


def _expand_n(params: SamplingParams) -> list[SamplingParams]:
    """n > 1 -> n single-sample copies (seeded ones get distinct seeds)."""
    if params.n == 1:
        return [params]
    copies = []
    for j in range(params.n):
        seed = None if params.seed is None else params.seed + j
        copies.append(dataclasses.replace(params, n=1, seed=seed, stop_strs=list(params.stop_strs)))
    return copies


def _check_logprob_args(
    return_logprob: Any, start: Any, top: Any, num_ids: int, vocab: int
) -> None:
    if not isinstance(return_logprob, bool):
        raise ValueError(f"return_logprob must be a boolean, got {return_logprob!r}")
    if not isinstance(start, int) or isinstance(start, bool):
        raise ValueError(f"logprob_start_len must be an integer, got {start!r}")
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= vocab:
        raise ValueError(f"top_logprobs_num must be an integer in [0, {vocab}], got {top!r}")
    if return_logprob and not -1 <= start < num_ids:
        raise ValueError(
            f"logprob_start_len={start} is out of range for a prompt of {num_ids} tokens "
            f"(expected -1 or 0..{num_ids - 1})"
        )
