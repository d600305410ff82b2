"""Reaction VLM on a tiny random-weight Qwen2-VL built locally (no hub, no ROS)."""
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from dispider_ros.core.memory import FrameTokens, MemoryBuffer, MemoryConfig
from dispider_ros.models import tiny
from dispider_ros.core.protocols import PromptParts
from dispider_ros.models.processors import load_processor
from dispider_ros.models.qwen2_vl import Qwen2VLBackend
from dispider_ros.models.registry import BACKENDS, load_reaction_vlm
from dispider_ros.models.vlm_config import ReactionVLMConfig

QUESTION = "What is on the table now?"


def synthetic_frames(n, seed=0, size=(120, 160)):
    """Distinct RGB frames: a colour ramp with a moving bright square."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for i in range(n):
        base = rng.integers(0, 256, 3)
        ramp = np.linspace(0, 1, w)[None, :, None] * (255 - base)[None, None, :]
        image = np.broadcast_to(base + ramp, (h, w, 3)).astype(np.uint8).copy()
        y, x = (7 * i) % (h - 20), (11 * i) % (w - 20)
        image[y:y + 20, x:x + 20] = 255 - base
        out.append(image)
    return out


@pytest.fixture(scope="module")
def model_path():
    torch.set_num_threads(1)
    return tiny.resolve_model_path("tiny:qwen2_vl")


def backend(path, **kwargs):
    kwargs.setdefault("max_new_tokens", 12)
    return load_reaction_vlm(ReactionVLMConfig(model=path, **kwargs))


@pytest.fixture(scope="module")
def vlm(model_path):
    return backend(model_path, kv_reuse=False)


def memory_with(vlm, images, camera="cam", start=0.0, mem=None):
    mem = MemoryBuffer(MemoryConfig(max_tokens=100_000)) if mem is None else mem
    for i, image in enumerate(images):
        mem.add_frame(vlm.encode_frame(image, camera_id=camera, stamp=start + i, frame_index=i))
    return mem


def pixel_path_tokens(vlm, parts, images, max_new_tokens):
    """Greedy tokens through the model's own pixel_values path (vision run inside generate)."""
    inputs = vlm.processor(text=[vlm.prompt_text(parts)], images=images, return_tensors="pt")
    vlm.model.model.rope_deltas = None
    with torch.inference_mode():
        out = vlm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=sorted(vlm.eos_ids), pad_token_id=vlm.tokenizer.pad_token_id)
    return inputs, out[0, inputs["input_ids"].shape[1]:].tolist()


# ---- build, reload, config -----------------------------------------------------------------
def test_tiny_builds_and_reloads_like_a_real_checkpoint(model_path):
    from transformers import AutoModelForImageTextToText, Qwen2TokenizerFast, Qwen2VLForConditionalGeneration

    folder = Path(model_path)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen2_vl"
    assert json.loads((folder / "video_preprocessor_config.json").read_text())[
        "video_processor_type"] == "Qwen2VLVideoProcessor"
    assert sum(p.stat().st_size for p in folder.iterdir()) < 2_000_000
    processor = load_processor(model_path, local_files_only=True)  # AutoProcessor where torchvision is
    assert isinstance(processor.tokenizer, Qwen2TokenizerFast)
    assert processor.image_processor.max_pixels == 112 * 112
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                  "<|video_pad|>"):
        assert processor.tokenizer.convert_tokens_to_ids(token) != processor.tokenizer.unk_token_id
        assert processor.tokenizer(token, add_special_tokens=False)["input_ids"] == \
            [processor.tokenizer.convert_tokens_to_ids(token)]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text and text.endswith("<|im_start|>assistant\n")
    model = AutoModelForImageTextToText.from_pretrained(model_path, local_files_only=True)
    assert isinstance(model, Qwen2VLForConditionalGeneration)
    inputs = processor(text=[text], images=synthetic_frames(1), return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 5


def test_config_validation_names_the_bad_value():
    for kwargs, name in [({"model": ""}, "model"), ({"dtype": "int8"}, "dtype"),
                         ({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1.0}, "temperature"),
                         ({"top_p": 0.0}, "top_p"), ({"max_pixels": 10}, "max_pixels"),
                         ({"min_new_tokens": 9, "max_new_tokens": 4}, "min_new_tokens"),
                         ({"frame_label": "{nope}"}, "frame_label")]:
        with pytest.raises(ValueError, match=name):
            ReactionVLMConfig(**kwargs)
    with pytest.raises(TypeError, match="device"):
        ReactionVLMConfig(device=0)


def test_loader_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reaction_vlm(ReactionVLMConfig(model=str(tmp_path / "missing")))
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama' model; reaction backends exist for"):
        load_reaction_vlm(ReactionVLMConfig(model=str(tmp_path / "llama")))
    assert BACKENDS["qwen2_vl"] is Qwen2VLBackend and BACKENDS["qwen2_5_vl"] is Qwen2VLBackend


# ---- encoding ------------------------------------------------------------------------------
def test_encode_frame_gives_the_vision_towers_tokens(vlm):
    image = synthetic_frames(1, size=(480, 640))[0]
    ft = vlm.encode_frame(image, camera_id="front", stamp=3.5, frame_index=7)
    assert ft.grid == (3, 4) and ft.tokens.shape == (12, vlm.hidden_size)  # 4:3 at <= 112*112 pixels
    assert (ft.camera_id, ft.stamp, ft.frame_index) == ("front", 3.5, 7) and ft.encode_ms > 0
    inputs = vlm.processor.image_processor(images=[image], return_tensors="pt")
    with torch.inference_mode():
        reference = vlm.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])[0]
    assert torch.equal(ft.tokens, reference)
    for bad in (image.astype(np.float32), image[:, :, :2], np.zeros((0, 4, 3), np.uint8), "image"):
        with pytest.raises(ValueError, match="image"):
            vlm.encode_frame(bad)
    # A batch of differently sized frames gives each frame what it gets alone.
    images = [image, synthetic_frames(1, seed=3, size=(200, 100))[0]]
    batch = vlm.encode_images(images)
    assert batch[1][1] == (5, 2)  # 200x100 -> 140x56 pixels -> (10, 4) patches -> 2x2 merge
    for (tokens, grid), single in zip(batch, images):
        alone = vlm.encode_frame(single)
        assert grid == alone.grid
        torch.testing.assert_close(tokens, alone.tokens, rtol=1e-5, atol=1e-5)


# ---- generation equivalences ---------------------------------------------------------------
def test_cached_visual_tokens_generate_what_pixel_values_generate(vlm):
    results = []
    for seed in (1, 2):
        images = synthetic_frames(4, seed=seed)
        parts = PromptParts(memory_with(vlm, images).snapshot(), QUESTION)
        inputs, expected = pixel_path_tokens(vlm, parts, images, 12)
        assert np.array_equal(vlm._assemble(parts).ids, inputs["input_ids"][0].numpy())
        got = vlm.generate(parts)
        assert got.token_ids == expected
        results.append(got.token_ids)
    assert results[0] != results[1]  # the answer depends on the frames: equality is not vacuous


def test_retrieved_keyframes_generate_what_pixel_values_generate(model_path, vlm):
    """Keyframes of retrieved clips sit in the suffix (after the cached memory): generate()
    must splice their visual tokens in, as the model's own pixel path does."""
    from dispider_ros.core.keyframe_store import as_retrieved

    reuse = backend(model_path, kv_reuse=True)
    images = synthetic_frames(3, seed=4)
    mem = memory_with(vlm, images)
    results = []
    for seed in (5, 6):
        old = synthetic_frames(2, seed=seed)
        retrieved = as_retrieved([vlm.encode_frame(image, camera_id="cam", stamp=0.5 + i)
                                  for i, image in enumerate(old)], camera_id="cam")
        parts = PromptParts(mem.snapshot(), QUESTION, retrieved=retrieved)
        inputs, expected = pixel_path_tokens(vlm, parts, images + old, 12)
        assert np.array_equal(vlm._assemble(parts).ids, inputs["input_ids"][0].numpy())
        got = [vlm.generate(parts).token_ids for _ in range(2)] + [reuse.generate(parts).token_ids for _ in range(2)]
        assert all(ids == expected for ids in got), (got, expected)
        results.append(expected)
    assert results[0] != results[1]  # the answer depends on the retrieved frames


def test_kv_reuse_generates_what_full_recompute_generates(model_path, vlm):
    reuse = backend(model_path, kv_reuse=True)
    mem = MemoryBuffer(MemoryConfig(max_tokens=10_000, protected_frames=2))
    images = synthetic_frames(12, seed=3)
    stamp = 0.0
    reused = []
    for step in range(4):
        memory_with(vlm, images[3 * step:3 * step + 3], start=stamp, mem=mem)
        stamp += 3
        if step == 1:
            mem.add_turn("user", QUESTION, stamp, n_tokens=5)
            mem.add_turn("assistant", "a red cup", stamp, n_tokens=3)
        if step == 3:
            mem.set_max_tokens(mem.token_count() - 10)  # pools the oldest frame: invalidates from there
        parts = PromptParts(mem.snapshot(), QUESTION if step % 2 else "Describe the scene.")
        a, b = reuse.generate(parts), vlm.generate(parts)
        assert a.token_ids == b.token_ids and a.text == b.text
        assert a.prompt_tokens == b.prompt_tokens == b.prefill_tokens
        reused.append(a.reused_tokens)
    assert reused[0] == 0 and reused[1] > 0 and reused[2] > reused[1]
    assert 0 < reused[3] < reused[2]  # after compression only the header and unchanged part


def test_incremental_positions_equal_get_rope_index_over_the_full_sequence(model_path, vlm):
    reuse = backend(model_path, kv_reuse=True)
    mem = memory_with(vlm, synthetic_frames(3, seed=4))
    reuse.generate(PromptParts(mem.snapshot(), QUESTION))
    memory_with(vlm, synthetic_frames(2, seed=5), start=10.0, mem=mem)
    prompt = reuse._assemble(PromptParts(mem.snapshot(), QUESTION))
    common = len(reuse._slots[0].ids)
    assert common > 0
    incremental = reuse._positions(prompt, common, reuse._slots[0].pos)
    grids = torch.tensor([(1, f.grid[0] * 2, f.grid[1] * 2) for _, f in prompt.frames])
    full, _ = reuse.model.model.get_rope_index(input_ids=torch.from_numpy(prompt.ids)[None],
                                               image_grid_thw=grids)
    assert torch.equal(incremental, full[:, 0])


def test_empty_memory_and_dialogue_only_prompts(vlm):
    assert vlm.generate(PromptParts([], QUESTION)).token_count > 0
    mem = MemoryBuffer(MemoryConfig(max_tokens=100))
    mem.add_turn("user", QUESTION, 0.0)
    mem.add_turn("assistant", "a cup", 0.0)
    parts = PromptParts(mem.snapshot(), "And now?")
    text = vlm.prompt_text(parts)
    assert text.endswith("<|im_start|>assistant\na cup<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n"
                         "<|im_start|>assistant\n")
    assert vlm.generate(parts).token_count > 0


def test_pooled_frames_are_valid_model_input(model_path, vlm):
    mem = MemoryBuffer(MemoryConfig(max_tokens=40, protected_frames=1))
    memory_with(vlm, synthetic_frames(5, seed=6), mem=mem)
    assert mem.stats()["max_level"] >= 1
    result = vlm.generate(PromptParts(mem.snapshot(), QUESTION))
    assert result.token_count > 0 and result.prompt_tokens > mem.token_count()


# ---- streaming, stopping, errors -------------------------------------------------------------
def test_streamed_chunks_are_the_decoded_answer(model_path):
    vlm = backend(model_path, max_new_tokens=40, min_new_tokens=40)
    parts = PromptParts(memory_with(vlm, synthetic_frames(2, seed=7)).snapshot(), QUESTION)
    chunks, counts = [], []
    result = vlm.generate(parts, on_text=lambda text, tokens: (chunks.append(text), counts.append(tokens)))
    assert len(chunks) >= 2 and "".join(chunks) == result.text
    # Each chunk says how many new tokens it and the chunks before it were decoded from.
    assert counts == sorted(counts) and 0 < counts[0] < counts[-1] <= result.token_count == 40
    for n, tokens in enumerate(counts):
        decoded = vlm.tokenizer.decode(result.token_ids[:tokens], skip_special_tokens=True)
        assert decoded.startswith("".join(chunks[:n + 1]))
    assert result.text == vlm.tokenizer.decode(result.token_ids, skip_special_tokens=True)
    assert result.token_count == 40 and result.stop_reason == "max_new_tokens"
    assert 0 < result.ttft_sec < result.duration_sec and result.tokens_per_sec > 0


def test_stop_event_ends_generation_early(model_path):
    vlm = backend(model_path, max_new_tokens=60, min_new_tokens=60)
    parts = PromptParts(memory_with(vlm, synthetic_frames(2, seed=8)).snapshot(), QUESTION)
    stop = threading.Event()
    result = vlm.generate(parts, on_text=lambda text, tokens: stop.set(), stop=stop)
    assert result.stop_reason == "stopped" and result.token_count < 60


def test_a_failing_forward_raises_and_the_next_generation_is_clean(model_path, vlm):
    reuse = backend(model_path, kv_reuse=True)
    parts = PromptParts(memory_with(vlm, synthetic_frames(3, seed=9)).snapshot(), QUESTION)
    expected = vlm.generate(parts).token_ids
    calls = {"n": 0}

    def fail_on_decode(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # after the prefill: the cache is half-written when this fires
            raise RuntimeError("injected decoder failure")

    handle = reuse.model.model.language_model.layers[1].register_forward_pre_hook(fail_on_decode, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="injected"):
            reuse.generate(parts)
    finally:
        handle.remove()
    again = reuse.generate(parts)
    assert again.token_ids == expected and again.reused_tokens == 0  # the broken cache was dropped
    bad = FrameTokens(tokens=torch.zeros(4, 7), grid=(2, 2), camera_id="bad")
    with pytest.raises(ValueError, match="width 7"):
        reuse.generate(PromptParts([bad], QUESTION))


def test_control_tokens_in_user_text_cannot_break_the_prompt(vlm):
    parts = PromptParts(memory_with(vlm, synthetic_frames(1, seed=10)).snapshot(),
                        "what <|image_pad|><|im_end|> is this")
    assert vlm.generate(parts).token_count > 0
    assert (vlm._assemble(parts).ids == vlm.image_pad_id).sum() == 12


def test_qwen2_5_vl_family_shares_the_backend(tmp_path):
    from dispider_ros.models import tiny_qwen2_vl

    tiny_qwen2_vl.build(tmp_path, family="qwen2_5_vl")
    vlm = backend(str(tmp_path), kv_reuse=True)
    assert vlm.model_type == "qwen2_5_vl"
    images = synthetic_frames(3, seed=11)
    mem = memory_with(vlm, images)
    parts = PromptParts(mem.snapshot(), QUESTION)
    _, expected = pixel_path_tokens(vlm, parts, images, 12)
    assert vlm.generate(parts).token_ids == expected
    memory_with(vlm, synthetic_frames(1, seed=12), start=5.0, mem=mem)
    grown = PromptParts(mem.snapshot(), QUESTION)
    again = vlm.generate(grown)
    fresh = backend(str(tmp_path), kv_reuse=False).generate(grown)
    assert again.reused_tokens > 0 and again.token_ids == fresh.token_ids


def test_real_footage_frames(shared_data, vlm):
    import cv2

    videos = sorted((shared_data / "videos").glob("*.mp4"))
    if not videos:
        pytest.skip(f"no .mp4 under {shared_data / 'videos'}")
    capture = cv2.VideoCapture(str(videos[0]))
    images = []
    while len(images) < 4:
        ok, bgr = capture.read()
        if not ok:
            break
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    assert images, f"could not decode {videos[0]}"
    parts = PromptParts(memory_with(vlm, images).snapshot(), QUESTION)
    _, expected = pixel_path_tokens(vlm, parts, images, 8)
    vlm8 = vlm.generate(parts)
    assert vlm8.token_ids[:8] == expected[:8]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_cuda_kv_reuse_matches_recompute_and_bfloat16_runs(model_path):
    reuse = backend(model_path, device="cuda:0", dtype="float32", kv_reuse=True)
    full = backend(model_path, device="cuda:0", dtype="float32", kv_reuse=False)
    mem = memory_with(reuse, synthetic_frames(6, seed=13))
    assert mem.snapshot()[0].tokens.device.type == "cuda"
    reuse.generate(PromptParts(mem.snapshot(), QUESTION))
    memory_with(reuse, synthetic_frames(1, seed=14), start=9.0, mem=mem)
    parts = PromptParts(mem.snapshot(), QUESTION)
    a, b = reuse.generate(parts), full.generate(parts)
    assert a.reused_tokens > 0 and a.token_ids == b.token_ids
    half = backend(model_path, device="cuda:0", dtype="bfloat16", kv_reuse=True)
    bf_mem = memory_with(half, synthetic_frames(6, seed=13))
    bf_mem.set_max_tokens(bf_mem.token_count() // 2)  # pooling keeps bfloat16 tokens
    assert bf_mem.snapshot()[0].tokens.dtype == torch.bfloat16
    assert half.generate(PromptParts(bf_mem.snapshot(), QUESTION)).token_count > 0
