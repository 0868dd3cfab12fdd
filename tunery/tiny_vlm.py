"""A tiny randomly initialised SmolVLM (the Idefics3 architecture of SmolVLM-256M/500M-Instruct), saved as a real
Hugging Face directory: what tests and `examples/multimodal_tuning.py` tune and serve, since no vision-language
model's weights can be downloaded on machines without a model hub. Its tokenizer is SmolLM2's (the default model's,
extracted from its GGUF) with SmolVLM's image tokens; its chat template is SmolVLM's own. 16.5 MB, built in ~1 s.

A real SmolVLM directory (or any `AutoModelForImageTextToText` model saved with its processor) works the same way:
`tunery tune --base-model /path/to/SmolVLM-256M-Instruct ...`.
"""

from __future__ import annotations

import copy
import json
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


def build(out_dir: str | Path, tokenizer: Any = None, seed: int = 0, family: str = "smolvlm") -> Path:
    """Write the model (a SmolVLM; `family` "gemma3" or "qwen2.5-vl" for those architectures instead) to `out_dir`: a 64-wide, 2-layer Llama text model and a 32-wide, 1-layer SigLIP vision
    tower on 32x32 images (one image is 4 image tokens, 7 with its markers)."""
    if family != "smolvlm":
        return FAMILIES[family](out_dir, tokenizer, seed)
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


# ---------------------------------------------------------------- Gemma 3

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
BOI, EOI, IMG = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
SOT, EOT = "<start_of_turn>", "<end_of_turn>"

# Gemma 3 (-it) chat template, as shipped with google/gemma-3-4b-it
GEMMA3_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""
GEMMA3_IMAGE, GEMMA3_PATCH, GEMMA3_TOKENS = 32, 8, 4  # (32/8)^2 = 16 patches, pooled to 4 tokens


def build_gemma3(out_dir: str | Path, tokenizer: Any = None, seed: int = 0) -> Path:
    """Gemma 3 (Gemma3ForConditionalGeneration): 4 <image_soft_token>s per 32x32 image, eos [<eos>, <end_of_turn>]."""
    import torch
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil,
                              Gemma3Processor, GenerationConfig)

    from tunery import models

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = copy.deepcopy(tokenizer if tokenizer is not None else models.load_tokenizer(models.resolve(None)))
    tok.add_special_tokens({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
                            "additional_special_tokens": [SOT, EOT, BOI, EOI, IMG]})
    # what Gemma 3's tokenizer_config.json names (the processor reads tokenizer.boi_token, .eoi_token, .image_token)
    tok._set_model_specific_special_tokens({"boi_token": BOI, "eoi_token": EOI, "image_token": IMG})
    ids = {t: tok.convert_tokens_to_ids(t) for t in (BOS, EOS, PAD, SOT, EOT, BOI, EOI, IMG)}
    images = Gemma3ImageProcessorPil(size={"height": GEMMA3_IMAGE, "width": GEMMA3_IMAGE}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=images, tokenizer=tok, image_seq_length=GEMMA3_TOKENS,
                                chat_template=GEMMA3_TEMPLATE)
    config = Gemma3Config(
        mm_tokens_per_image=GEMMA3_TOKENS, boi_token_index=ids[BOI], eoi_token_index=ids[EOI], image_token_index=ids[IMG],
        tie_word_embeddings=True,
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
                         sliding_window=64, layer_types=["sliding_attention", "full_attention"],
                         max_position_embeddings=2048, bos_token_id=ids[BOS], eos_token_id=[ids[EOS], ids[EOT]],
                         pad_token_id=ids[PAD], initializer_range=0.2, tie_word_embeddings=True),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=GEMMA3_IMAGE, patch_size=GEMMA3_PATCH, vision_use_head=False))
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    # as google/gemma-3-4b-it ships it: eos_token_id [<eos>, <end_of_turn>]
    model.generation_config = GenerationConfig(bos_token_id=ids[BOS], eos_token_id=[ids[EOS], ids[EOT]],
                                               pad_token_id=ids[PAD])
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out



# ---------------------------------------------------------------- Qwen2.5-VL

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VSTART, VEND, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"

# Qwen2.5-VL-Instruct's chat template, as shipped with Qwen/Qwen2.5-VL-3B-Instruct
QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_PATCH, QWEN_MERGE, QWEN_TEMPORAL = 14, 2, 2
MIN_PIXELS, MAX_PIXELS = 56 * 56, 56 * 84


def build_qwen25vl(out_dir: str | Path, tokenizer: Any = None, seed: int = 0) -> Path:
    """Qwen2.5-VL: M-RoPE, 6 <|image_pad|>s for a 40x32 image, eos [<|im_end|>, <|endoftext|>]; saved as a hub
    checkpoint lays it out (its processor class cannot be built here without torchvision)."""
    import torch
    from transformers import (GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2VLImageProcessorPil)

    from tunery import models

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = copy.deepcopy(tokenizer if tokenizer is not None else models.load_tokenizer(models.resolve(None)))
    tok.add_special_tokens({"additional_special_tokens": [IM_START, IM_END, VSTART, VEND, IMAGE_PAD, VIDEO_PAD]})
    tok.eos_token, tok.pad_token = IM_END, ENDOFTEXT  # as Qwen2.5-VL-Instruct's tokenizer_config.json
    ids = {t: tok.convert_tokens_to_ids(t) for t in (IM_START, IM_END, ENDOFTEXT, VSTART, VEND, IMAGE_PAD, VIDEO_PAD)}
    images = Qwen2VLImageProcessorPil(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
                                      patch_size=QWEN_PATCH, temporal_patch_size=QWEN_TEMPORAL, merge_size=QWEN_MERGE)
    head_dim = 16  # 64 / 4 heads; M-RoPE splits its 8 frequencies into (temporal, height, width)
    config = Qwen2_5_VLConfig(
        image_token_id=ids[IMAGE_PAD], video_token_id=ids[VIDEO_PAD], vision_start_token_id=ids[VSTART],
        vision_end_token_id=ids[VEND], tie_word_embeddings=True,
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                             "mrope_section": [2, 3, 3]},
                         bos_token_id=ids[ENDOFTEXT], eos_token_id=ids[IM_END], pad_token_id=ids[ENDOFTEXT],
                         initializer_range=0.2, tie_word_embeddings=True),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE, temporal_patch_size=QWEN_TEMPORAL,
                           window_size=112, fullatt_block_indexes=[0]))
    assert sum(config.text_config.rope_parameters["mrope_section"]) == head_dim // 2
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    # as Qwen2.5-VL-3B-Instruct ships it: eos [<|im_end|>, <|endoftext|>]
    model.generation_config = GenerationConfig(bos_token_id=ids[ENDOFTEXT], eos_token_id=[ids[IM_END], ids[ENDOFTEXT]],
                                               pad_token_id=ids[ENDOFTEXT])
    model.save_pretrained(out)
    # Qwen2_5_VLProcessor(image_processor, tokenizer, video_processor) cannot be built without torchvision (its
    # video processor needs it, and the class check looks up VideoProcessorMixin, absent then); so the processor's
    # parts are saved as a hub checkpoint lays them out: preprocessor_config.json, the tokenizer, the chat template
    images.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "chat_template.jinja").write_text(QWEN_TEMPLATE)
    cfg = json.loads((out / "preprocessor_config.json").read_text())
    cfg["processor_class"] = "Qwen2_5_VLProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2))
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    tcfg["processor_class"] = "Qwen2_5_VLProcessor"
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2))
    return out



FAMILIES = {"gemma3": build_gemma3, "qwen2.5-vl": build_qwen25vl}
