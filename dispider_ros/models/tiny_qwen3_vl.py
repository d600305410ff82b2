"""Build a tiny random-weight Qwen3-VL (or Qwen3-VL-MoE) with its processor, offline.

The folder reloads with `AutoModelForImageTextToText` (Qwen3VLForConditionalGeneration /
Qwen3VLMoeForConditionalGeneration) under `local_files_only`, like Qwen/Qwen3-VL-2B-Instruct,
and runs `generate()`. What is tiny:
- text model: hidden 64, 3 layers, 2 heads (1 KV head) of head_dim 32, interleaved M-RoPE with
  sections (6, 5, 5) over the 16 rotary frequencies; the MoE puts 4 experts (2 per token,
  width 32) in every layer;
- vision tower: hidden 32, 3 blocks, patch 16, 2x2 merge into the 64-wide text space, an 8x8
  table of learned position embeddings (interpolated to the grid), and DeepStack on: blocks
  0 and 1 feed decoder layers 0 and 1 (`deepstack_visual_indexes` [0, 1]);
- image processor: Qwen2VLImageProcessor with patch 16, min 64*64, max 128*128 pixels, so a
  4:3 camera frame becomes 12 visual tokens (a (3, 4) grid after the merge), as the tiny
  Qwen2-VL's does;
- tokenizer and chat template: tiny_qwen2_vl's (Qwen3-VL keeps Qwen2-VL's special tokens).

Weights are drawn at tiny_qwen2_vl.INIT_RANGE so greedy answers depend on the input.
Video processor: Qwen3-VL's needs torchvision; the folder is saved with a placeholder and a
real Qwen3VLVideoProcessor's video_preprocessor_config.json, as tiny_qwen2_vl does.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path


from dispider_ros.models.tiny import save_random_model

from dispider_ros.models.tiny_qwen2_vl import (CHAT_TEMPLATE, HIDDEN, INIT_RANGE, SEED, SPECIAL_TOKENS,
                                               VISION_EMBED, build_tokenizer)

LOG = logging.getLogger(__name__)

MIN_PIXELS = 64 * 64
MAX_PIXELS = 128 * 128
PATCH = 16
DEEPSTACK = [0, 1]
FAMILIES = ("qwen3_vl", "qwen3_vl_moe")
IMAGE_MEAN = [0.5, 0.5, 0.5]  # Qwen3-VL's normalisation (Qwen2-VL used CLIP's)
IMAGE_STD = [0.5, 0.5, 0.5]


def _model_config(tokenizer, family: str):
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
        max_position_embeddings=32768, rope_theta=10000.0,
        # Interleaved M-RoPE: head_dim/2 = 16 frequencies, T at 0,3,..,15, H at 1,4,..,13, W at 2,5,..,14.
        rope_scaling={"rope_type": "default", "mrope_section": [6, 5, 5], "mrope_interleaved": True},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True, initializer_range=INIT_RANGE)
    vision_config = dict(
        depth=3, hidden_size=VISION_EMBED, intermediate_size=2 * VISION_EMBED, num_heads=2,
        patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=HIDDEN,
        num_position_embeddings=64, deepstack_visual_indexes=DEEPSTACK, initializer_range=INIT_RANGE)
    common = dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    if family == "qwen3_vl":
        config = Qwen3VLConfig(text_config=text_config, vision_config=vision_config, **common)
    else:
        text_config.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                           decoder_sparse_step=1, mlp_only_layers=[])
        config = Qwen3VLMoeConfig(text_config=text_config, vision_config=vision_config, **common)
    config.initializer_range = INIT_RANGE  # the MoE experts' init reads the top-level value
    return config


def _video_processor_dict() -> dict:
    """What Qwen3VLVideoProcessor would save, with this model's small pixel limits."""
    return {
        "video_processor_type": "Qwen3VLVideoProcessor", "do_resize": True, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": IMAGE_MEAN, "image_std": IMAGE_STD,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": 4 * MAX_PIXELS},
        "patch_size": PATCH, "temporal_patch_size": 2, "merge_size": 2, "resample": 3,
        "fps": 2, "min_frames": 4, "max_frames": 64, "do_sample_frames": True,
    }


def build(folder: Path, family: str = "qwen3_vl") -> None:
    """Save a tiny Qwen3-VL (or Qwen3-VL-MoE) model, tokenizer and processor into folder.

    Args:
        folder: an existing (empty) directory.
        family: "qwen3_vl" (the `tiny:qwen3_vl` spec) or "qwen3_vl_moe" (`tiny:qwen3_vl_moe`).
    """
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor

    from dispider_ros.models.processors import no_video_processor

    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {FAMILIES}")
    folder = Path(folder)
    tokenizer = build_tokenizer()
    config = _model_config(tokenizer, family)
    model = save_random_model(config, folder, SEED)
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=PATCH,
                                            temporal_patch_size=2, merge_size=2, image_mean=IMAGE_MEAN,
                                            image_std=IMAGE_STD)
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=no_video_processor(), chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    (folder / "video_preprocessor_config.json").write_text(json.dumps(_video_processor_dict(), indent=2))
    LOG.info("tiny %s saved to %s (%d parameters)", family, folder,
             sum(p.numel() for p in model.parameters()))


def build_qwen3_vl_moe(folder: Path) -> None:
    """The `tiny:qwen3_vl_moe` spec (tiny.resolve_model_path calls build_<family>)."""
    build(folder, family="qwen3_vl_moe")
