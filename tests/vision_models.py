"""Tiny random-weight vision-language models saved as Hugging Face folders (unit and e2e tests).

LLaVA-1.5 and LLaVA-NeXT built with transformers' config classes: a 2-layer CLIP tower on
28-pixel tiles of 14-pixel patches (4 patches a tile), a 2-layer Llama decoder, a byte-level
tokenizer of its own with an `<image>` token and a chatml template (no download).

Qwen2-VL and Qwen2.5-VL likewise: a 2-block vision transformer on 14-pixel patches merged 2x2
(images resized to multiples of 28 pixels, 56*56 to 28*28*16 pixels), a 2-layer decoder with
M-RoPE, a tokenizer with Qwen's vision tokens, and the image processor's config.
"""

from __future__ import annotations

import os

import numpy as np
import torch

IMAGE_TOKEN = "<image>"
TILE = 28
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    initializer_range=0.2,  # logits far from uniform, so greedy outputs are well defined
    bos_token_id=1,
    eos_token_id=2,
    tie_word_embeddings=False,
)
_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=TILE,
    patch_size=14,
    projection_dim=32,
    initializer_range=0.2,
)
PINPOINTS = [[28, 56], [56, 28], [56, 56]]


def save_tiny_llava(path: str, kind: str = "llava", seed: int = 0) -> str:
    """Save a random float32 LLaVA ("llava") or LLaVA-NeXT ("llava_next") with its tokenizer
    and image processor to path; return path."""
    import transformers

    tokenizer = _tokenizer()
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vision = transformers.CLIPVisionConfig(**_VISION)
    text = transformers.LlamaConfig(vocab_size=len(tokenizer), **_TEXT)
    common = dict(vision_config=vision, text_config=text, image_token_index=token_id)
    torch.manual_seed(seed)
    if kind == "llava":
        config = transformers.LlavaConfig(**common, image_seq_length=4)
        model = transformers.LlavaForConditionalGeneration(config)
        images = transformers.CLIPImageProcessor(
            size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE}
        )
    else:
        config = transformers.LlavaNextConfig(**common, image_grid_pinpoints=PINPOINTS)
        model = transformers.LlavaNextForConditionalGeneration(config)
        images = transformers.LlavaNextImageProcessor(
            size={"shortest_edge": TILE},
            crop_size={"height": TILE, "width": TILE},
            image_grid_pinpoints=PINPOINTS,
        )
    with torch.no_grad():  # zero-initialized vectors would not test their paths
        for name, param in model.named_parameters():
            if name.endswith(("image_newline", "class_embedding")) or ".bias" in name:
                param.normal_(0, 0.5)
    model.to(torch.float32).save_pretrained(path)
    processor_cls = (
        transformers.LlavaProcessor if kind == "llava" else transformers.LlavaNextProcessor
    )
    processor = processor_cls(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=_VISION["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the tower's CLS position
        chat_template=CHATML,
    )
    processor.save_pretrained(path)
    return path


QWEN_VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 56 * 56, 28 * 28 * 16
_QWEN_TEXT = dict(
    _TEXT,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
)


def save_tiny_qwen2_vl(path: str, kind: str = "qwen2_vl", seed: int = 0) -> str:
    """Save a random float32 Qwen2-VL ("qwen2_vl") or Qwen2.5-VL ("qwen2_5_vl") with its
    tokenizer and image processor to path; return path."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tokenizer = _tokenizer(QWEN_VISION_TOKENS)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_VISION_TOKENS}
    common = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    if kind == "qwen2_vl":
        vision = transformers.Qwen2VLVisionConfig(
            depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, initializer_range=0.2
        )
        text = transformers.Qwen2VLTextConfig(vocab_size=len(tokenizer), **_QWEN_TEXT)
        config = transformers.Qwen2VLConfig(
            vision_config=vision.to_dict(), text_config=text.to_dict(), **common
        )
        model = transformers.Qwen2VLForConditionalGeneration(config)
    else:
        vision = transformers.Qwen2_5_VLVisionConfig(
            depth=2,
            hidden_size=32,
            intermediate_size=48,
            num_heads=4,
            out_hidden_size=64,
            window_size=56,  # windows of 2x2 merged patches
            fullatt_block_indexes=[1],
            initializer_range=0.2,
        )
        text = transformers.Qwen2_5_VLTextConfig(vocab_size=len(tokenizer), **_QWEN_TEXT)
        config = transformers.Qwen2_5_VLConfig(
            vision_config=vision.to_dict(), text_config=text.to_dict(), **common
        )
        model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    with torch.no_grad():  # zero-initialized biases and unit norms would not test their paths
        for name, param in model.named_parameters():
            if ".bias" in name or "norm" in name or "ln_q" in name:
                param.normal_(0, 0.5)
    model.to(torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    images = Qwen2VLImageProcessorPil(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    images.save_pretrained(path)
    return path


class QwenReferenceProcessor:
    """What transformers' Qwen2VLProcessor does (it needs torchvision for its video part):
    each `<|image_pad|>` expanded to its image's merged patch count, mm_token_type_ids 1 there."""

    def __init__(self, path: str) -> None:
        import transformers

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.image_processor = transformers.AutoImageProcessor.from_pretrained(path)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")

    def __call__(self, images: list, text: list[str], return_tensors: str = "pt") -> dict:
        assert len(text) == 1, "one prompt"
        out: dict = {}
        prompt = text[0]
        if images:
            pixels = self.image_processor(images, return_tensors="pt")
            out["pixel_values"] = pixels["pixel_values"]  # [patches, C * tp * p * p]
            out["image_grid_thw"] = pixels["image_grid_thw"]  # [images, 3]
            merge = self.image_processor.merge_size**2
            parts = prompt.split("<|image_pad|>")
            assert len(parts) == len(images) + 1, "one <|image_pad|> per image"
            prompt = parts[0]
            for grid, part in zip(out["image_grid_thw"], parts[1:]):
                prompt += "<|image_pad|>" * int(grid.prod() // merge) + part
        ids = torch.tensor([self.tokenizer.encode(prompt)])
        out["input_ids"] = ids
        out["attention_mask"] = torch.ones_like(ids)
        out["mm_token_type_ids"] = (ids == self.image_token_id).int()
        return out


def _tokenizer(extra_specials: tuple | list = ()):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    corpus = ["the quick brown fox jumps over the lazy dog", "what is in this image?"] * 4
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN, *extra_specials]
    bpe.train_from_iterator(corpus, vocab_size=300, special_tokens=specials, show_progress=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHATML
    return fast


def make_image(path: str, height: int, width: int, seed: int) -> str:
    """A random RGB PNG of height x width at path; return path."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def reference(path: str):
    """transformers' model and processor for a saved tiny model (float32, eager attention)."""
    import transformers

    model = transformers.AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    )
    if model.config.model_type in ("qwen2_vl", "qwen2_5_vl"):
        return model.eval(), QwenReferenceProcessor(path)
    processor = transformers.AutoProcessor.from_pretrained(path)
    return model.eval(), processor


def image_files(folder: str) -> dict[str, str]:
    """Three test images: two of one size with different pixels, one of another shape."""
    os.makedirs(folder, exist_ok=True)
    return {
        "a": make_image(os.path.join(folder, "a.png"), 40, 60, seed=1),
        "b": make_image(os.path.join(folder, "b.png"), 40, 60, seed=2),
        "tall": make_image(os.path.join(folder, "tall.png"), 70, 30, seed=3),
    }
