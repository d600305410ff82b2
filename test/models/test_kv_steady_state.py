"""KV on arrival, batched compression and double-buffered re-prefill, on the tiny Qwen2-VL,
Qwen3-VL, Qwen3-VL-MoE (DeepStack features prefilled with each frame, pooled with it) and
SmolVLM (every test runs for each family).

Each answer the engine gives is checked against a full recompute (a backend with no cache)
over the very prompt the engine built: greedy tokens must be identical after appends,
compressions and background re-prefills.
"""
import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

from dispider_ros.core.memory import MemoryBuffer, MemoryConfig
from dispider_ros.core.protocols import PromptParts, ReactionVLM
from dispider_ros.core.reaction import ReactionConfig, ReactionEngine
from dispider_ros.core.types import Frame, TriggerEvent
from dispider_ros.models import tiny
from dispider_ros.models.registry import load_reaction_vlm
from dispider_ros.models.vlm_config import ReactionVLMConfig

QUESTION = "What changed?"


def frames(n, seed=0, size=(96, 128)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen3_vl", "qwen3_vl_moe", "smolvlm"])
def model_path(request):
    torch.set_num_threads(1)
    return tiny.resolve_model_path(f"tiny:{request.param}")


def load(path, kv_reuse):
    return load_reaction_vlm(ReactionVLMConfig(model=path, kv_reuse=kv_reuse, max_new_tokens=6))


@pytest.fixture(scope="module")
def recompute(model_path):
    return load(model_path, kv_reuse=False)


class Recording(ReactionVLM):
    """The real backend, recording each prompt and result; `hold` makes prefill steps into
    the background slot do nothing (a re-prefill held open)."""

    def __init__(self, inner):
        self.inner, self.calls, self.hold = inner, [], threading.Event()
        self.engine = None

    def encode_frame(self, *args, **kwargs):
        return self.inner.encode_frame(*args, **kwargs)

    def generate(self, parts, on_text=None, stop=None):
        result = self.inner.generate(parts, on_text, stop)
        self.calls.append((parts, result))
        return result

    def prefill(self, items, slot=0, max_tokens=1 << 30):
        if self.hold.is_set() and slot != self.engine.keeper.stats()["kv_slot"]:
            time.sleep(0.005)
            return 0, self.inner._assemble(PromptParts(list(items), "")).prefix_len
        return self.inner.prefill(items, slot, max_tokens)

    def count_tokens(self, text):
        return self.inner.count_tokens(text)

    @property
    def hidden_size(self):
        return self.inner.hidden_size

    def frame_overhead_tokens(self, frame=None):
        return self.inner.frame_overhead_tokens(frame)

    def turn_overhead_tokens(self):
        return self.inner.turn_overhead_tokens()


def engine_with(path, max_tokens=360, step=48):
    vlm = Recording(load(path, kv_reuse=True))
    finals = []
    config = ReactionConfig(memory=MemoryConfig(max_tokens=max_tokens, protected_frames=2),
                            warm_step_tokens=step, label_every_sec=2.0)
    engine = ReactionEngine(config, lambda e: finals.append(e) if e.final else None, vlm=vlm)
    vlm.engine = engine
    return engine, vlm, finals


def feed(engine, images, start_index, stamp_step=0.5):
    for i, image in enumerate(images):
        index = start_index + i
        engine.ingest(Frame(image=image, camera_id="cam", stamp=index * stamp_step, index=index))


def trigger(n, index, stamp_step=0.5):
    return TriggerEvent(trigger_id=f"t{n}", query_id=f"q{n}", query_text=QUESTION, camera_id="cam",
                        policy="now", score=1.0, stamp=index * stamp_step, frame_index=index,
                        clip_index=0, clip_start=0.0, clip_end=index * stamp_step)


def wait_warm(engine, timeout=30.0):
    deadline = time.monotonic() + timeout
    while engine.keeper.pending():
        assert time.monotonic() < deadline, "the prefix cache never caught up"
        time.sleep(0.01)


def assert_same_as_recompute(vlm, recompute):
    for parts, result in vlm.calls:
        full = recompute.generate(PromptParts(list(parts.items), parts.question))
        assert result.token_ids == full.token_ids
        assert result.prompt_tokens == full.prompt_tokens


def test_answers_equal_a_full_recompute_through_appends_compressions_and_rebuilds(model_path, recompute):
    engine, vlm, finals = engine_with(model_path)
    images = frames(96, seed=1)
    try:
        for n in range(24):
            feed(engine, images[4 * n:4 * n + 4], 4 * n)
            if n % 2:  # some triggers find the cache current, others mid-rebuild
                wait_warm(engine)
            engine.submit(trigger(n, 4 * n + 3))
            assert engine.wait_idle(30)
        stats, memory = engine.stats(), engine.memory.stats()
    finally:
        engine.close()
    assert [f.error_code for f in finals] == [0] * 24
    assert memory["compressions"] >= 3 and memory["pool_ops"] > 0
    # Rebuilds swapped in, and arrivals were warmed: 21-27 steps, depending on the family (its
    # answers go into memory and move the compressions); at least one per trigger that waited.
    assert stats["swaps"] >= 1 and stats["rebuild_steps"] > 0 and stats["warm_steps"] >= 12
    assert_same_as_recompute(vlm, recompute)
    # Steady state: the triggers that found the cache current prefilled their question only.
    question = len(vlm.inner._assemble(PromptParts([], QUESTION)).ids) - \
        len(vlm.inner._assemble(PromptParts([], "")).ids) + 8
    current = [r for i, (_, r) in enumerate(vlm.calls) if i % 2]
    assert all(r.prefill_tokens <= question for r in current), [r.prefill_tokens for r in current]


def test_a_trigger_during_a_held_rebuild_is_answered_from_the_old_view(model_path, recompute):
    engine, vlm, finals = engine_with(model_path, max_tokens=300)
    images = frames(80, seed=2)
    try:
        index = 0
        while engine.memory.stats()["compressions"] == 0:  # fill to the first compression
            wait_warm(engine)
            feed(engine, images[index:index + 1], index)
            index += 1
        vlm.hold.set()  # the rebuild of the compressed prefix makes no progress
        deadline = time.monotonic() + 30
        while engine.keeper.stats()["rebuild_steps"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        feed(engine, images[index:index + 1], index)  # an arrival during the rebuild
        index += 1
        engine.submit(trigger(0, index - 1))
        assert engine.wait_idle(30)
        held = vlm.calls[-1][1]
        assert engine.keeper.stats()["swaps"] == 0 and engine.keeper.counts["stale_view_prompts"] >= 1
        vlm.hold.clear()
        wait_warm(engine)
        assert engine.keeper.stats()["swaps"] == 1
        feed(engine, images[index:index + 1], index)
        index += 1
        wait_warm(engine)
        engine.submit(trigger(1, index - 1))
        assert engine.wait_idle(30)
        after = vlm.calls[-1][1]
    finally:
        engine.close()
    # Answered meanwhile from the foreground cache: the old view was reused, only the
    # arrivals and the question were prefilled -- nothing waited for the rebuild.
    assert held.reused_tokens > 200 and held.prefill_tokens < 60, held
    assert after.reused_tokens > 150 and after.prefill_tokens < 30, after
    assert [f.error_code for f in finals] == [0, 0]
    assert_same_as_recompute(vlm, recompute)


def test_memory_statistics_are_exact(model_path):
    vlm = load(model_path, kv_reuse=True)
    engine = ReactionEngine(ReactionConfig(memory=MemoryConfig(max_tokens=10_000)), lambda e: None, vlm=vlm)
    try:
        feed(engine, frames(9, seed=3), 0)  # labels at 0, 2 and 4 s: frames 0, 4, 8
        items = engine.memory.snapshot()
        assert [f.labelled for f in items] == [i % 4 == 0 for i in range(9)]
        assert [f.named for f in items if f.labelled] == [True, False, False]  # camera named once
        assert vlm._label(items[0]) == "cam 0.0s" and vlm._label(items[4]) == "2.0s"
        stats = engine.memory.stats()
        assert stats["tokens"] == stats["visual_tokens"] + stats["frame_overhead_tokens"] + stats["turn_tokens"]
        assert stats["frames"] == 9 and stats["history_span_sec"] == 4.0
        # The memory's count is the prompt's: header + user opening + exactly its tokens.
        header = vlm._assemble(PromptParts([], "")).prefix_len  # the system message
        opening = vlm.count_tokens(vlm._render(PromptParts(items, ""))[0][1])  # the user message's opening
        prompt = vlm._assemble(PromptParts(items, ""))
        assert prompt.prefix_len == header + opening + stats["tokens"]
        unlabelled = dataclasses.replace(items[1])
        assert vlm.frame_overhead_tokens(unlabelled) == vlm.FRAME_LEAD + 1 < vlm.frame_overhead_tokens(items[0])
    finally:
        engine.close()


def test_fifo_keeps_the_newest_frames_unpooled(model_path):
    vlm = load(model_path, kv_reuse=False)
    memory = MemoryBuffer(MemoryConfig(max_tokens=200, protected_frames=1, policy="fifo"),
                          frame_cost=vlm.frame_overhead_tokens)
    for i, image in enumerate(frames(40, seed=4)):
        memory.add_frame(vlm.encode_frame(image, camera_id="cam", stamp=float(i), frame_index=i))
    stats = memory.stats()
    assert stats["pool_ops"] == 0 and stats["frames_dropped"] > 0 and stats["tokens"] <= 200
    assert [f.frame_index for f in memory.snapshot()] == list(range(40 - stats["frames"], 40))
