"""Tiny random-weight vision-language models saved as Hugging Face folders (unit and e2e tests).

LLaVA-1.5 and LLaVA-NeXT built with transformers' config classes: a 2-layer CLIP tower on
28-pixel tiles of 14-pixel patches (4 patches a tile), a 2-layer Llama decoder, a byte-level
tokenizer of its own with an `<image>` token and a chatml template (no download).
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


def _tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    corpus = ["the quick brown fox jumps over the lazy dog", "what is in this image?"] * 4
    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]
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
