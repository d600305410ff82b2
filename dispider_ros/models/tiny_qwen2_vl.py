"""Build a tiny random-weight Qwen2-VL (or Qwen2.5-VL) with its processor, offline.

The folder reloads with `AutoProcessor` / `AutoModelForImageTextToText` (or
`Qwen2VLForConditionalGeneration`) under `local_files_only`, exactly like a real checkpoint
such as Qwen/Qwen2-VL-2B-Instruct, and runs `generate()`. What is tiny:
- text model: hidden 64, 2 layers, 2 heads, M-RoPE sections (2, 3, 3) over head_dim 32;
- vision tower: embed 32, 2 blocks, patch 14, 2x2 merge into the 64-wide text space;
- image processor: min 56*56, max 112*112 pixels, so a 4:3 camera frame becomes 12 visual
  tokens (a (3, 4) grid after the merge);
- tokenizer: a ~400-token byte-level BPE trained here with `tokenizers` using Qwen2's own
  pre-tokenizer regex, wrapped in `Qwen2TokenizerFast` (Qwen processors reject a plain
  `PreTrainedTokenizerFast`) with the special tokens Qwen2-VL needs and its chat template.

Video processor: Qwen2-VL's needs torchvision, which cannot be installed beside the CPU torch
here. The processor is saved with a placeholder and its video_preprocessor_config.json is then
written as a real Qwen2VLVideoProcessor's, so `AutoProcessor` loads the folder wherever
torchvision exists; elsewhere `dispider_ros.models.processors.load_processor` assembles it from the
image processor and tokenizer. Frames are always fed as images.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path


from dispider_ros.models.tiny import save_random_model

LOG = logging.getLogger(__name__)

HIDDEN = 64
VISION_EMBED = 32
VOCAB_SIZE = 400
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112
SEED = 1234
# Weights drawn wider than the real 0.02 so that the random model's greedy answers depend on
# its input (at 0.02 it repeats one token whatever it sees, which would make equality tests
# between two generation paths vacuous).
INIT_RANGE = 0.3
FAMILIES = ("qwen2_vl", "qwen2_5_vl")

# Qwen2's pre-tokenizer split (tokenizer.json of Qwen/Qwen2-VL-2B-Instruct).
SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# Qwen2-VL-Instruct's template, shortened: images/videos in user content become
# <|vision_start|><|image_pad|><|vision_end|> (the processor expands the pad per image).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SENTENCES = [
    "You are a helpful assistant watching live camera streams. Answer briefly.",
    "Tell me when the person picks up the red cup.",
    "What is on the table now?",
    "Guide me through what the cook is doing.",
    "Let me know when the door opens.",
    "Alert me if someone enters the room.",
    "Describe the scene as it happens.",
    "A rabbit stands in a green meadow under a blue sky.",
    "A flower slowly opens its petals in the sunlight.",
    "Water flows over the rocks in a small stream.",
    "A robot arm places a box on the shelf.",
    "The dog runs across the grass and jumps.",
    "The man is cutting vegetables in the kitchen.",
    "Is there anyone near the window? Yes, one person.",
    "Count the people standing by the counter: 3 people.",
    "Camera front at 12.5 s shows a car driving down the street.",
    "user assistant system",
]


def build_tokenizer(extra_sentences=(), vocab_size: int = VOCAB_SIZE):
    """Byte-level BPE with Qwen2's pre-tokenizer and special tokens, as Qwen2TokenizerFast.

    Args:
        extra_sentences: more training text (a trained model's world: its captions, questions).
        vocab_size: BPE vocabulary size (special tokens included).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator((SENTENCES + list(extra_sentences)) * 4, trainer=trainer)
    return Qwen2TokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        bos_token=None, model_max_length=32768, chat_template=CHAT_TEMPLATE,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        # generate() rejects token_type_ids, which the base class would otherwise add.
        model_input_names=["input_ids", "attention_mask"])


def _model_config(tokenizer, family: str, hidden: int = HIDDEN, vision_embed: int = VISION_EMBED,
                  layers: int = 2, heads: int = 2, init_range: float = INIT_RANGE):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    head_dim = hidden // heads  # M-RoPE sections split head_dim / 2 as (1/4, 3/8, 3/8)
    section = [head_dim // 8, 3 * head_dim // 16, head_dim // 2 - head_dim // 8 - 3 * head_dim // 16]

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=1,
        max_position_embeddings=32768, rope_theta=10000.0,
        # M-RoPE splits head_dim / 2 rotary frequencies into (temporal, height, width).
        rope_scaling={"type": "mrope", "mrope_section": section},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True, initializer_range=init_range)
    common = dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, initializer_range=init_range)
    if family == "qwen2_vl":
        vision_config = dict(depth=2, embed_dim=vision_embed, hidden_size=hidden, num_heads=2,
                             mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                             initializer_range=init_range)
        return Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **common)
    vision_config = dict(depth=2, hidden_size=vision_embed, intermediate_size=2 * vision_embed,
                         out_hidden_size=hidden, num_heads=2, patch_size=14, spatial_merge_size=2,
                         temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
                         initializer_range=init_range)
    return Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **common)


def _video_processor_dict() -> dict:
    """What Qwen2VLVideoProcessor would save, with this model's small pixel limits."""
    return {
        "video_processor_type": "Qwen2VLVideoProcessor", "do_resize": True, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": 14,
        "temporal_patch_size": 2, "merge_size": 2, "resample": 3, "do_sample_frames": False,
    }


def build(folder: Path, family: str = "qwen2_vl") -> None:
    """Save a tiny Qwen2-VL (or Qwen2.5-VL) model, tokenizer and processor into folder.

    Args:
        folder: an existing (empty) directory.
        family: "qwen2_vl" (the `tiny:qwen2_vl` spec) or "qwen2_5_vl".
    """
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {FAMILIES}")
    folder = Path(folder)
    tokenizer = build_tokenizer()
    config = _model_config(tokenizer, family)
    model = save_random_model(config, folder, SEED)
    save_processor(folder, tokenizer, family)
    LOG.info("tiny %s saved to %s (%d parameters)", family, folder,
             sum(p.numel() for p in model.parameters()))


def save_processor(folder: Path, tokenizer, family: str = "qwen2_vl") -> None:
    """Save the image processor (MIN_PIXELS..MAX_PIXELS), tokenizer and chat template."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor

    from dispider_ros.models.processors import no_video_processor

    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    processor_cls = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer,
                              video_processor=no_video_processor(), chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    (Path(folder) / "video_preprocessor_config.json").write_text(json.dumps(_video_processor_dict(), indent=2))
