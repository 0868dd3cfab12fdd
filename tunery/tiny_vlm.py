"""A tiny randomly initialised SmolVLM (the Idefics3 architecture of SmolVLM-256M/500M-Instruct), saved as a real
Hugging Face directory: what tests and `examples/multimodal_tuning.py` tune and serve, since no vision-language
model's weights can be downloaded on machines without a model hub. Its tokenizer is SmolLM2's (the default model's,
extracted from its GGUF) with SmolVLM's image tokens; its chat template is SmolVLM's own. 16.5 MB, built in ~1 s.

A real SmolVLM directory (or any `AutoModelForImageTextToText` model saved with its processor) works the same way:
`tunery tune --base-model /path/to/SmolVLM-256M-Instruct ...`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

FAKE, IMAGE, GLOBAL, END = "<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"

# SmolVLM-Instruct's chat template, as shipped (no {% generation %} markers: tunery finds the answers itself)
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IMAGE_SIZE, PATCH, SCALE = 32, 8, 2
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH) ** 2 // SCALE ** 2  # 16 patches, pixel-shuffled by 2x2: 4 <image> tokens


def build(out_dir: str | Path, tokenizer: Any = None, seed: int = 0) -> Path:
    """Write the model to `out_dir`: a 64-wide, 2-layer Llama text model and a 32-wide, 1-layer SigLIP vision
    tower on 32x32 images (one image is 4 image tokens, 7 with its markers)."""
    import torch
    from transformers import (GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration,
                              Idefics3ImageProcessorPil, Idefics3Processor)

    from tunery import models

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = copy.deepcopy(tokenizer if tokenizer is not None else models.load_tokenizer(models.resolve(None)))
    tok.add_special_tokens({"additional_special_tokens": [FAKE, IMAGE, GLOBAL, END]})
    tok.eos_token = END  # SmolVLM-Instruct ends its turns with <end_of_utterance>
    ids = {t: tok.convert_tokens_to_ids(t) for t in (FAKE, IMAGE, GLOBAL, END)}
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
                                       max_image_size={"longest_edge": IMAGE_SIZE})
    processor = Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=IMAGE_SEQ_LEN,
                                  chat_template=CHAT_TEMPLATE)
    pad = tok.pad_token_id
    config = Idefics3Config(
        image_token_id=ids[IMAGE], scale_factor=SCALE, tie_word_embeddings=True,
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=ids[END], pad_token_id=pad,
                         initializer_range=0.2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=IMAGE_SIZE, patch_size=PATCH))
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=ids[END], pad_token_id=pad)
    model.save_pretrained(out)  # safetensors
    processor.save_pretrained(out)
    return out
