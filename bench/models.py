"""Bench-scale random-weight models of the real families (SigLIP, Qwen2-VL), built locally.

Bigger than the tiny test models, smaller than the real checkpoints: the shapes keep the
real families' proportions (head_dim 64 in the language model, GQA with fewer KV heads, an
MLP ~5.5x wide, a patch-14 ViT with a 2x2 merger into the text width, a vision tower of
~0.4x the language model's parameters as in Qwen2-VL-2B; a SigLIP ViT-B/16 layout at 224
pixels) but fit two CPU cores. Each folder is written once with `save_pretrained` under
`<cache>/bench/<name>-v<BUILD_VERSION>` and loaded through the same `from_pretrained` path
a real checkpoint takes (`VisionEncoder`, `load_reaction_vlm`), with local_files_only.
`node_settings` gives a node's shipped settings (config/dispider.yaml over the parameter
schema) with these folders as its model, and `load_encoder` / `load_vlm` load them through
the builders the nodes use (dispider_ros.compose), so only the weights are the bench's.

| role | real reference | bench scale |
|---|---|---|
| SigLIP vision | base-patch16-224: 768 wide, 12 layers, 12 heads, MLP 3072, 196 patches | 256 wide, 6 layers, 4 heads, MLP 1024, 224 px / patch 16 = 196 patches |
| SigLIP text | 768 wide, 12 layers, 64 tokens | 256 wide, 4 layers, 16 tokens |
| Qwen2-VL text | 2B: 1536 wide, 28 layers, 12 heads / 2 KV, MLP 8960, vocab 151k | 256 wide, 4 layers, 4 heads / 2 KV (head_dim 64), MLP 1408, vocab 4096 (a ~400-token BPE; the rest never decoded) |
| Qwen2-VL vision | 1280 wide, 32 blocks, 16 heads, patch 14, merge 2x2 | 128 wide, 8 blocks, 4 heads, patch 14, merge 2x2 |
| frame size | up to 12.8 Mpx (video: ~0.1-0.4 Mpx/frame) | max_pixels 140*168: 640x480 -> 112x168 px -> 24 visual tokens |
"""
from __future__ import annotations

import json
import threading
import logging
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from dispider_ros import compose, settings
from dispider_ros.core import schema
from dispider_ros.models import tiny

LOG = logging.getLogger(__name__)

BUILD_VERSION = "1"  # bump when a scale below changes so stale folders are rebuilt
SEED = 4321
INIT_RANGE = 0.02  # the real checkpoints' initializer_range: realistic activation scales


@dataclass(frozen=True)
class QwenScale:
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 1408
    vocab_size: int = 4096
    vision_embed: int = 128
    vision_depth: int = 8
    vision_heads: int = 4
    vision_mlp_ratio: int = 4
    patch_size: int = 14
    merge: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 140 * 168


@dataclass(frozen=True)
class SiglipScale:
    hidden: int = 256
    layers: int = 6
    heads: int = 4
    intermediate: int = 1024
    image_size: int = 224
    patch_size: int = 16
    text_layers: int = 4
    text_length: int = 16


QWEN = QwenScale()
SIGLIP = SiglipScale()


def bench_root() -> Path:
    return tiny.cache_root().parent / "bench"


def describe() -> dict:
    """The scale of both models, for the results JSON."""
    return {"qwen2_vl": asdict(QWEN), "siglip": asdict(SIGLIP), "build_version": BUILD_VERSION,
            "weights": f"random, seed {SEED}, initializer_range {INIT_RANGE}",
            "dtype": "float32"}


def _build_qwen2_vl(folder: Path) -> None:
    from transformers import (AutoModelForImageTextToText, Qwen2VLConfig, Qwen2VLImageProcessor,
                              Qwen2VLProcessor)

    from dispider_ros.models import tiny_qwen2_vl as tq
    from dispider_ros.models.processors import no_video_processor

    s = QWEN
    tokenizer = tq.build_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in tq.SPECIAL_TOKENS}
    head_dim = s.text_hidden // s.text_heads
    # M-RoPE: head_dim/2 rotary frequencies split (temporal, height, width) like Qwen2-VL's
    # (16, 24, 24) of 64.
    quarter = head_dim // 2 // 4
    text_config = dict(
        vocab_size=max(s.vocab_size, len(tokenizer)), hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate, num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads, num_key_value_heads=s.text_kv_heads,
        max_position_embeddings=32768, rope_theta=1_000_000.0,
        rope_scaling={"type": "mrope", "mrope_section": [quarter, (head_dim // 2 - quarter) // 2,
                                                         (head_dim // 2 - quarter) // 2]},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True, initializer_range=INIT_RANGE)
    vision_config = dict(depth=s.vision_depth, embed_dim=s.vision_embed, hidden_size=s.text_hidden,
                         num_heads=s.vision_heads, mlp_ratio=s.vision_mlp_ratio,
                         patch_size=s.patch_size, spatial_merge_size=s.merge,
                         temporal_patch_size=2, initializer_range=INIT_RANGE)
    config = Qwen2VLConfig(
        text_config=text_config, vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, initializer_range=INIT_RANGE)
    torch.manual_seed(SEED)
    model = AutoModelForImageTextToText.from_config(config).eval()
    with torch.no_grad():
        # Token ids the tokenizer cannot decode are never chosen (they only give the output
        # layer the width a real vocabulary has).
        model.get_input_embeddings().weight[len(tokenizer):] = 0.0
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    image_processor = Qwen2VLImageProcessor(min_pixels=s.min_pixels, max_pixels=s.max_pixels)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=no_video_processor(), chat_template=tq.CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    video = tq._video_processor_dict()
    video.update(size={"shortest_edge": s.min_pixels, "longest_edge": s.max_pixels},
                 min_pixels=s.min_pixels, max_pixels=s.max_pixels)
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))


def _build_siglip(folder: Path) -> None:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    from dispider_ros.models import tiny_siglip as ts

    s = SIGLIP
    tokenizer = ts.build_tokenizer()
    tokenizer.model_max_length = s.text_length
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=s.hidden, intermediate_size=s.intermediate,
        num_hidden_layers=s.text_layers, num_attention_heads=s.heads,
        max_position_embeddings=s.text_length, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
        projection_size=s.hidden)
    vision_config = dict(hidden_size=s.hidden, intermediate_size=s.intermediate,
                         num_hidden_layers=s.layers, num_attention_heads=s.heads,
                         image_size=s.image_size, patch_size=s.patch_size)
    torch.manual_seed(SEED)
    model = SiglipModel(SiglipConfig(text_config=text_config, vision_config=vision_config)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(float(torch.log(torch.tensor(20.0))))
        model.logit_bias.fill_(-10.0)
    model.save_pretrained(folder, safe_serialization=True)
    image_processor = SiglipImageProcessor(size={"height": s.image_size, "width": s.image_size})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


BUILDERS = {"qwen2_vl": _build_qwen2_vl, "siglip": _build_siglip}


def model_path(name: str) -> str:
    """Folder of the bench-scale model `name` ("qwen2_vl" or "siglip"), built on first use."""
    if name not in BUILDERS:
        raise ValueError(f"unknown bench model {name!r}; known: {sorted(BUILDERS)}")
    folder = bench_root() / f"{name}-v{BUILD_VERSION}"
    return tiny.build_once(folder, BUILDERS[name], f"bench-scale {name}")


NODE_MODEL = {"perception_node": "siglip", "decision_node": "siglip", "reaction_node": "qwen2_vl"}


def node_settings(node: str, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A node's shipped settings (schema defaults, then config/dispider.yaml) with the
    bench-scale model as its model parameter, then `overrides` (a benchmark's deviations)."""
    values = {schema.MODEL_PARAM[node]: model_path(NODE_MODEL[node])}
    values.update(overrides or {})
    return settings.node_settings(node, overrides=values)


def load_encoder(overrides: Optional[Dict[str, Any]] = None):
    """The bench SigLIP, loaded as perception_node loads its encoder (compose)."""
    return compose.load_vision_encoder(node_settings("perception_node", overrides), "perception_node")


def load_vlm(overrides: Optional[Dict[str, Any]] = None, **config_changes):
    """The bench Qwen2-VL, configured as reaction_node configures it (compose), then
    `config_changes` to its ReactionVLMConfig (a benchmark's generation settings, e.g.
    kv_reuse or a forced answer length; it lists them in its protocol)."""
    from dispider_ros.models.registry import load_reaction_vlm

    node = node_settings("reaction_node", overrides)
    config = compose.reaction_vlm_config(node, settings.resolve_models("reaction_node", node))
    return load_reaction_vlm(dataclasses.replace(config, **config_changes))


class ShippedReaction:
    """A ReactionEngine as reaction_node composes it at the shipped settings, with the bench
    Qwen2-VL answering exactly `answer_tokens` (a fixed answer length, so arms compare
    prefill, not luck); `wrap` wraps the model (e.g. to record what it was given).
    `finals` maps trigger id -> final event; `done` is set on each final."""

    def __init__(self, answer_tokens: int, wrap=None):
        from dispider_ros.core.reaction import ReactionEngine

        lengths = {"max_new_tokens": answer_tokens, "min_new_tokens": answer_tokens}
        self.config = compose.reaction_config(node_settings("reaction_node", lengths))
        self.period = 1.0 / node_settings("perception_node")["sample_fps"]
        vlm = load_vlm(lengths)
        self.vlm = wrap(vlm) if wrap is not None else vlm
        self.finals: dict = {}
        self.done = threading.Event()
        self.engine = ReactionEngine(self.config, self._on_response, vlm=self.vlm)

    def _on_response(self, event) -> None:
        if event.final:
            self.finals[event.trigger_id] = event
            self.done.set()
