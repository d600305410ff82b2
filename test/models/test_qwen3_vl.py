"""Qwen3-VL and Qwen3-VL-MoE reaction backend on tiny random-weight models built locally.

Parity: greedy tokens from cached visual tokens + DeepStack features equal the model's own
generate(pixel_values=..., image_grid_thw=...), and the KV-reusing backend equals a full
recompute through appends, compressions and partial prefills. The engine-level steady state
(background re-prefills, double-buffered slots) runs on these models in
test_kv_steady_state.py (its model_path fixture is parametrized over the families).
"""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dispider_ros.core.memory import MemoryBuffer, MemoryConfig, pool_frame
from dispider_ros.core.protocols import PromptParts
from dispider_ros.models import tiny
from dispider_ros.models.processors import load_processor
from dispider_ros.models.qwen3_vl import Qwen3VLBackend
from dispider_ros.models.registry import BACKENDS
from test_vlm import QUESTION, backend, memory_with, pixel_path_tokens, synthetic_frames

FAMILIES = ("qwen3_vl", "qwen3_vl_moe")
MODEL_CLASSES = {"qwen3_vl": "Qwen3VLForConditionalGeneration",
                 "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration"}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def model_path(family):
    torch.set_num_threads(1)
    return tiny.resolve_model_path(f"tiny:{family}")


@pytest.fixture(scope="module")
def vlm(model_path):
    return backend(model_path, kv_reuse=False)


def dialogue_memory(vlm, seed, protected_frames=4):
    """Three labelled frames, a question and its answer, two more frames."""
    images = synthetic_frames(5, seed=seed)
    mem = memory_with(vlm, images[:3], mem=MemoryBuffer(MemoryConfig(max_tokens=100_000,
                                                                     protected_frames=protected_frames)))
    mem.add_turn("user", QUESTION, 2.5, n_tokens=5)
    mem.add_turn("assistant", "a red cup", 2.5, n_tokens=3)
    memory_with(vlm, images[3:], start=3.0, mem=mem)
    return mem, images


# ---- build, reload, registry -----------------------------------------------------------------
def test_tiny_builds_and_reloads_like_a_real_checkpoint(family, model_path, vlm):
    from transformers import AutoModelForImageTextToText, Qwen3VLProcessor

    folder = Path(model_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == family
    assert config["vision_config"]["deepstack_visual_indexes"] == [0, 1]
    assert config["text_config"]["rope_scaling"]["mrope_interleaved"] is True
    assert json.loads((folder / "video_preprocessor_config.json").read_text())[
        "video_processor_type"] == "Qwen3VLVideoProcessor"
    assert sum(p.stat().st_size for p in folder.iterdir()) < 2_500_000
    processor = load_processor(model_path, local_files_only=True)  # no torchvision needed
    assert isinstance(processor, Qwen3VLProcessor)
    assert (processor.image_processor.patch_size, processor.image_processor.merge_size) == (16, 2)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text
    model = AutoModelForImageTextToText.from_pretrained(model_path, local_files_only=True)
    assert type(model).__name__ == MODEL_CLASSES[family]
    if family == "qwen3_vl_moe":
        assert all(type(layer.mlp).__name__ == "Qwen3VLMoeTextSparseMoeBlock" and layer.mlp.num_experts == 4
                   for layer in model.model.language_model.layers)
    assert BACKENDS[family] is Qwen3VLBackend and isinstance(vlm, Qwen3VLBackend)
    assert vlm.model_type == family and vlm.merge == 2 and vlm.deepstack_layers == 2


# ---- encoding --------------------------------------------------------------------------------
def test_encode_frame_keeps_the_towers_tokens_and_deepstack_features(vlm):
    image = synthetic_frames(1, size=(480, 640))[0]
    ft = vlm.encode_frame(image, camera_id="front", stamp=3.5, frame_index=7)
    # 4:3 at <= 128*128 pixels in 32x32 tokens (patch 16, 2x2 merge): 96x128 -> (3, 4).
    assert ft.grid == (3, 4) and ft.tokens.shape == (12, vlm.hidden_size)
    assert len(ft.extra) == 2 and all(e.shape == (12, vlm.hidden_size) for e in ft.extra)
    inputs = vlm.processor.image_processor(images=[image], return_tensors="pt")
    with torch.inference_mode():
        embeds, deepstack = vlm.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    assert torch.equal(ft.tokens, embeds[0])
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(ft.extra, deepstack))
    assert not torch.allclose(ft.extra[0], ft.extra[1])  # one feature set per vision block
    # A batch of differently sized frames gives each frame what it gets alone, features included.
    images = [image, synthetic_frames(1, seed=3, size=(200, 100))[0]]
    batch = vlm._encode(images)
    assert batch[1][1] == (5, 2)  # 200x100 -> 160x64 pixels -> (10, 4) patches -> 2x2 merge
    for (tokens, grid, extra), single in zip(batch, images):
        alone = vlm.encode_frame(single)
        assert grid == alone.grid and len(extra) == 2
        torch.testing.assert_close(tokens, alone.tokens, rtol=1e-5, atol=1e-5)
        for mine, theirs in zip(extra, alone.extra):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("preset, model", [("qwen3vl_2b", "Qwen/Qwen3-VL-2B-Instruct"),
                                           ("qwen3vl_4b", "Qwen/Qwen3-VL-4B-Instruct")])
def test_gpu_presets_budget_about_120_visual_tokens_per_frame(preset, model):
    """The real checkpoints' image processor (Qwen2VLImageProcessor, patch 16, merge 2, min
    65536 pixels) at the preset's max_frame_pixels: 640x480 -> 9 x 13 tokens, 720p -> 8 x 15."""
    from transformers import Qwen2VLImageProcessor

    from dispider_ros.models.presets import load_preset

    data = load_preset(preset)
    assert (data["vlm_model"], data["device"], data["dtype"]) == (model, "cuda:0", "bfloat16")
    processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, min_pixels=65536,
                                      max_pixels=data["max_frame_pixels"])
    for (h, w), tokens in (((480, 640), 117), ((720, 1280), 120)):
        grid = processor(images=[np.zeros((h, w, 3), np.uint8)], return_tensors="pt")["image_grid_thw"][0]
        assert int(grid.prod()) // 4 == tokens <= 128


# ---- generation equivalences ------------------------------------------------------------------
def test_cached_tokens_and_deepstack_generate_what_pixel_values_generate(vlm):
    results = []
    for seed in (1, 2):
        mem, images = dialogue_memory(vlm, seed)
        parts = PromptParts(mem.snapshot(), "Describe the scene.")
        assert "cam 0.0s<|vision_start|>" in vlm.prompt_text(parts)  # labelled frames
        assert "<|im_start|>assistant\na red cup<|im_end|>" in vlm.prompt_text(parts)
        inputs, expected = pixel_path_tokens(vlm, parts, images, 12)
        assert np.array_equal(vlm._assemble(parts).ids, inputs["input_ids"][0].numpy())
        got = vlm.generate(parts)
        assert got.token_ids == expected and len(expected) == 12
        results.append(got.token_ids)
    assert results[0] != results[1]  # the answer depends on the frames: equality is not vacuous


def test_deepstack_features_decide_the_answer(vlm, monkeypatch):
    """The parity above would not hold without DeepStack: dropping it changes the tokens."""
    mem, images = dialogue_memory(vlm, 1)
    parts = PromptParts(mem.snapshot(), "Describe the scene.")
    _, expected = pixel_path_tokens(vlm, parts, images, 12)
    zeroed = [dataclasses.replace(f, extra=tuple(torch.zeros_like(e) for e in f.extra))
              if hasattr(f, "extra") else f for f in parts.items]
    assert vlm.generate(PromptParts(zeroed, parts.question)).token_ids != expected
    stripped = [dataclasses.replace(f, extra=()) if hasattr(f, "extra") else f for f in parts.items]
    with pytest.raises(ValueError, match="DeepStack"):
        vlm.generate(PromptParts(stripped, parts.question))
    # The model's own pixel path, with its DeepStack injection switched off, also differs.
    monkeypatch.setattr(vlm.model.model.language_model, "_deepstack_process",
                        lambda hidden, mask, embeds: hidden)
    assert pixel_path_tokens(vlm, parts, images, 12)[1] != expected


def test_kv_reuse_equals_recompute_through_appends_compressions_and_partial_prefills(model_path, vlm):
    reuse = backend(model_path, kv_reuse=True)
    mem = MemoryBuffer(MemoryConfig(max_tokens=10_000, protected_frames=2), frame_cost=vlm.frame_overhead_tokens)
    images = synthetic_frames(15, seed=3)
    reused, stamp = [], 0.0
    for step in range(5):
        memory_with(vlm, images[3 * step:3 * step + 3], start=stamp, mem=mem)
        stamp += 3
        if step == 1:
            mem.add_turn("user", QUESTION, stamp, n_tokens=5)
            mem.add_turn("assistant", "a red cup", stamp, n_tokens=3)
        if step >= 3:  # pools the oldest frames: invalidates the cache from there
            mem.set_max_tokens(mem.token_count() - 10)
        slot = 0
        if step == 4:  # the prefix rebuilt in the other slot in small steps, as the engine does
            slot, steps = 1, 0
            while True:
                done, total = reuse.prefill(mem.snapshot(), slot=1, max_tokens=7)
                steps += 1
                if done >= total:
                    break
                assert steps < 100
            assert steps > 5
        parts = PromptParts(mem.snapshot(), QUESTION if step % 2 else "Describe the scene.", cache_slot=slot)
        a, b = reuse.generate(parts), vlm.generate(parts)
        assert a.token_ids == b.token_ids and a.text == b.text
        assert a.prompt_tokens == b.prompt_tokens == b.prefill_tokens
        reused.append(a.reused_tokens)
    assert reused[0] == 0 and reused[1] > 0 and reused[2] > reused[1]
    assert 0 < reused[3] < reused[2]  # after a compression only the unchanged head
    prefix = reuse._assemble(PromptParts(mem.snapshot(), "")).prefix_len
    assert reused[4] == prefix  # fully prefilled in the background slot
    pooled = [f for f in mem.snapshot() if getattr(f, "level", 0) > 0]
    assert pooled and all(len(f.extra) == 2 and f.extra[0].shape[0] == f.n_tokens for f in pooled)


def test_pooled_deepstack_features_are_the_pooled_rows(vlm):
    ft = vlm.encode_frame(synthetic_frames(1, seed=5, size=(480, 640))[0])
    pooled = pool_frame(ft, 2)
    assert pooled.grid == (3, 2) and len(pooled.extra) == 2
    for before, after in zip(ft.extra, pooled.extra):
        as_tokens = pool_frame(dataclasses.replace(ft, tokens=before, extra=()), 2)
        assert torch.equal(after, as_tokens.tokens)


def test_incremental_positions_and_decode_delta_equal_the_full_sequences(model_path, vlm):
    """The slot's positions (get_rope_index on each new tail, offset by the cached prefix's max)
    and the decode rope_deltas equal get_rope_index over the whole prompt, after an append (the
    tail holds frames) and after a compression (a pooled frame's smaller grid)."""
    reuse = backend(model_path, kv_reuse=True)
    mem = memory_with(vlm, synthetic_frames(3, seed=4),
                      mem=MemoryBuffer(MemoryConfig(max_tokens=10_000, protected_frames=1, target_ratio=1.0)))
    reuse.generate(PromptParts(mem.snapshot(), QUESTION))
    memory_with(vlm, synthetic_frames(2, seed=5), start=10.0, mem=mem)
    for change in ("append", "compression"):
        if change == "compression":
            mem.set_max_tokens(mem.token_count() - 10)
        parts = PromptParts(mem.snapshot(), QUESTION)
        prompt = reuse._assemble(parts)
        grids = torch.tensor([(1, f.grid[0] * 2, f.grid[1] * 2) for _, f in prompt.frames])
        full, deltas = reuse.model.model.get_rope_index(input_ids=torch.from_numpy(prompt.ids)[None],
                                                        image_grid_thw=grids)
        result = reuse.generate(parts)
        assert 0 < result.reused_tokens < prompt.prefix_len
        assert torch.equal(reuse._slots[0].pos, full[:, 0, :prompt.prefix_len])
        assert int(reuse.model.model.rope_deltas) == int(deltas[0, 0]) < 0  # frames take fewer positions
        assert (change == "compression") == any(f.level > 0 for _, f in prompt.frames)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_cuda_parity_kv_reuse_and_bfloat16(model_path):
    reuse = backend(model_path, device="cuda:0", dtype="float32", kv_reuse=True)
    full = backend(model_path, device="cuda:0", dtype="float32", kv_reuse=False)
    mem, images = dialogue_memory(reuse, 6)
    first = mem.snapshot()[0]
    assert first.tokens.device.type == "cuda" and all(e.device.type == "cuda" for e in first.extra)
    parts = PromptParts(mem.snapshot(), QUESTION)
    _, expected = pixel_path_tokens(full, parts, images, 12)
    assert full.generate(parts).token_ids == expected
    reuse.generate(parts)
    memory_with(reuse, synthetic_frames(1, seed=14), start=9.0, mem=mem)
    grown = PromptParts(mem.snapshot(), QUESTION)
    a, b = reuse.generate(grown), full.generate(grown)
    assert a.reused_tokens > 0 and a.token_ids == b.token_ids
    half = backend(model_path, device="cuda:0", dtype="bfloat16", kv_reuse=True)
    bf_mem, _ = dialogue_memory(half, 6, protected_frames=1)
    bf_mem.set_max_tokens(bf_mem.token_count() // 2)  # pooling keeps bfloat16 tokens and features
    pooled = [f for f in bf_mem.snapshot() if getattr(f, "level", 0) > 0]
    assert pooled and all(e.dtype == torch.bfloat16 for f in pooled for e in (f.tokens, *f.extra))
    assert half.generate(PromptParts(bf_mem.snapshot(), QUESTION)).token_count > 0
