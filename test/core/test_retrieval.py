"""Question-relevant clip retrieval: clip features (ClipIndex), the decision naming clips on a
question about the past, and keyframes at full resolution (KeyframeStore: RAM, then
safetensors on disk)."""
import dataclasses
import math

import numpy as np
import pytest
import torch

from dispider_ros.core.clip_index import ClipIndex
from dispider_ros.core.decision import DecisionConfig, DecisionCore
from dispider_ros.core.keyframe_store import KeyframeStore, frame_bytes
from dispider_ros.core.memory import FrameTokens
from dispider_ros.core.query_text import refers_to_past
from dispider_ros.core.types import FrameFeature, QuerySpec

pytestmark = pytest.mark.retrieval
D = 8
BASIS = np.eye(D, dtype=np.float32)


def feature(stamp, clip, embedding, camera="cam", index=None):
    return FrameFeature(camera_id=camera, stamp=stamp, frame_index=int(round(stamp * 2)) if index is None else index,
                        clip_index=clip, clip_boundary=False, clip_similarity=0.9, clip_start=float(clip),
                        embedding=embedding)


def tokens(stamp, camera="cam", n=4, width=6, seed=0):
    values = torch.from_numpy(np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32))
    return FrameTokens(tokens=values, grid=(1, n), camera_id=camera, stamp=stamp, frame_index=int(stamp * 2),
                       labelled=False, named=False, arrival=int(stamp * 2), encode_ms=1.5)


# ---- clip features ---------------------------------------------------------------------------
def test_clips_are_ranked_by_the_match_probability_of_their_mean_and_the_open_clip_is_left_out():
    index = ClipIndex(max_clips=100)
    for clip, axis in enumerate((0, 1, 2, 0)):  # clip 3 (axis 0 again) is the open one
        for i in range(3):
            v = BASIS[axis] + 0.1 * BASIS[7] * i
            index.observe(feature(clip * 2.0 + 0.5 * i, clip, v / np.linalg.norm(v)))
    ranked = index.rank(BASIS[1], k=2, calibration=(10.0, -5.0))
    assert [c.clip_index for c in ranked] == [1, 0]  # clip 3 matches best too, but it is open
    best = ranked[0]
    assert (best.start, best.end) == (1.0, 3.0)
    mean = np.mean([BASIS[1] + 0.1 * BASIS[7] * i for i in range(3)], axis=0)
    cos = float(mean @ BASIS[1] / np.linalg.norm(mean))
    assert best.score == pytest.approx(1 / (1 + math.exp(-(10 * cos - 5))), rel=1e-5)
    assert index.rank(BASIS[1], k=2, calibration=(10.0, -5.0), min_score=0.5) == [best]  # cos 0: 0.007
    assert index.rank(BASIS[1], k=0, calibration=(10.0, -5.0)) == []
    assert index.rank(BASIS[1], k=3, calibration=(10.0, -5.0), cameras=("other",)) == []


def test_the_index_is_bounded_and_a_camera_can_be_cleared():
    index = ClipIndex(max_clips=3)
    for clip in range(5):
        index.observe(feature(float(clip), clip, BASIS[clip % D]))
    assert len(index) == 3 and index.stats() == {"clips_indexed": 3, "clips_evicted": 2}
    index.observe(feature(0.0, 0, BASIS[0], camera="other"))
    index.clear("cam")
    assert len(index) == 1
    with pytest.raises(ValueError, match="max_clips"):
        ClipIndex(0)


# ---- the decision names clips on a question about the past ------------------------------------
class AxisEncoder:
    """Texts naming a word of WORDS embed as that axis; all else as the last axis."""

    WORDS = ("rocket", "cat", "horse")

    def __call__(self, texts):
        return np.stack([BASIS[next((i for i, w in enumerate(self.WORDS) if w in t), D - 1)] for t in texts])


def test_a_question_about_the_past_names_the_relevant_clips_and_one_about_the_present_none():
    assert refers_to_past("Tell me about the rocket you saw.") and refers_to_past("What happened before?")
    assert not refers_to_past("What is in front of the camera?")
    core = DecisionCore(DecisionConfig(id_prefix="t", max_queries_per_sec=0.0), text_encoder=AxisEncoder())
    for clip, axis in enumerate((0, 1, 2, 3)):  # rocket, cat, horse, then something else (open)
        for i in range(4):
            core.on_feature(feature(clip * 2.0 + 0.5 * i, clip, BASIS[axis]))
    _, fired = core.add_query(QuerySpec("past", "Tell me about the rocket you saw.", mode="now"), 8.0)
    assert [(c.clip_index, c.start, c.end) for c in fired[0].retrieved] == [(0, 0.0, 1.5)]
    assert fired[0].retrieved[0].score > 0.99  # cos 1 -> sigmoid(10 - 5)
    _, fired = core.add_query(QuerySpec("present", "What is the rocket doing now?", mode="now"), 8.0)
    assert fired[0].retrieved == ()
    core.set_config(retrieval_k=0)
    _, fired = core.add_query(QuerySpec("off", "Did you see a cat?", mode="now"), 8.0)
    assert fired[0].retrieved == ()
    core.set_config(retrieval_k=3, retrieval_min_score=0.0)
    _, fired = core.add_query(QuerySpec("all", "Did you see a cat?", mode="now"), 8.0)
    assert [c.clip_index for c in fired[0].retrieved][0] == 1 and len(fired[0].retrieved) == 3
    assert core.stats()["clips_indexed"] == 4
    core.on_feature(feature(0.0, 0, BASIS[0]))  # time went back: the old timeline's clips go
    assert core.stats()["clips_indexed"] == 1


def test_without_a_text_encoder_nothing_is_retrieved():
    core = DecisionCore(DecisionConfig(id_prefix="t", max_queries_per_sec=0.0))
    for i in range(4):
        core.on_feature(feature(0.5 * i, i // 2, BASIS[0]))
    _, fired = core.add_query(QuerySpec("past", "What did you see earlier?", mode="now"), 2.0)
    assert fired[0].retrieved == ()


# ---- keyframes ---------------------------------------------------------------------------------
def test_a_retrieved_keyframe_names_its_camera_only_when_it_changes():
    from dispider_ros.core.keyframe_store import as_retrieved

    frames = [tokens(3.0, camera="b"), tokens(1.0), tokens(2.0), tokens(4.0, camera="b")]
    shown = as_retrieved(frames, camera_id="cam")
    assert [(f.stamp, f.camera_id, f.labelled, f.named, f.key) for f in shown] == [
        (1.0, "cam", True, False, -1), (2.0, "cam", True, False, -1), (3.0, "b", True, True, -1),
        (4.0, "b", True, False, -1)]


def test_keyframes_spread_over_the_clip_whatever_its_length():
    store = KeyframeStore(per_clip=2, ram_bytes=1 << 30, disk_bytes=0)
    for n in range(100):
        store.add(tokens(n * 0.5, seed=n), clip_index=0)
    store.add(tokens(60.0), clip_index=-1)  # unknown clip: no keyframe
    assert [f.stamp for f in store.get("cam", 0)] == [0.0, 32.0]  # offsets 0 and 64
    for n in range(3):
        store.add(tokens(100 + n), clip_index=1)
    assert [f.stamp for f in store.get("cam", 1)] == [100.0, 102.0]
    assert store.get("cam", 9) == [] and store.get("other", 0) == []


def test_beyond_ram_clips_go_to_disk_and_come_back_bit_for_bit_then_the_oldest_are_deleted(tmp_path):
    def frame(clip, i):
        return dataclasses.replace(tokens(clip * 2.0 + i, seed=10 * clip + i),
                                   extra=(torch.full((4, 3), float(clip)),), media=bytes([clip, i, 255]))

    clip_bytes = 2 * frame_bytes(frame(0, 0))
    store = KeyframeStore(per_clip=2, ram_bytes=2 * clip_bytes, disk_bytes=3 * clip_bytes, folder=str(tmp_path))
    added = {}
    for clip in range(8):
        for i in range(2):
            added.setdefault(clip, []).append(frame(clip, i))
            store.add(added[clip][-1], clip_index=clip)
    stats = store.stats()
    # 8 clips of 2 keyframes: 2 in RAM (the open one and the newest closed), 3 on disk, 3 deleted
    assert (stats["keyframe_ram_bytes"], stats["keyframe_disk_bytes"]) == (2 * clip_bytes, 3 * clip_bytes)
    assert stats["clips_on_disk"] == 3 and stats["clips_evicted"] == 3 and stats["clips_stored"] == 5
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    assert store.get("cam", 0) == [] and store.get("cam", 2) == [] and store.stats()["clips_read_back"] == 0
    for clip in (3, 4, 5, 6, 7):
        back = store.get("cam", clip)
        assert len(back) == 2
        for got, want in zip(back, added[clip]):
            assert torch.equal(got.tokens, want.tokens) and torch.equal(got.extra[0], want.extra[0])
            assert (got.media, got.grid, got.stamp, got.frame_index, got.arrival, got.encode_ms) == \
                (want.media, want.grid, want.stamp, want.frame_index, want.arrival, want.encode_ms)
    store.clear("cam")
    assert list(tmp_path.glob("*.safetensors")) == [] and store.stats()["clips_stored"] == 0


def test_without_disk_the_oldest_clips_leave_ram_and_close_removes_the_temporary_folder():
    one = frame_bytes(tokens(0.0))
    store = KeyframeStore(per_clip=1, ram_bytes=2 * one, disk_bytes=0)
    for clip in range(5):
        store.add(tokens(float(clip)), clip_index=clip)
    assert store.stats()["clips_evicted"] == 3 and store.get("cam", 1) == [] and store.get("cam", 4)
    spilling = KeyframeStore(per_clip=1, ram_bytes=0, disk_bytes=10 * one)
    for clip in range(3):
        spilling.add(tokens(float(clip)), clip_index=clip)
    folder = spilling._folder
    assert folder is not None and len(list(folder.glob("*.safetensors"))) == 2
    spilling.close()
    assert not folder.exists()
    with pytest.raises(ValueError, match="per_clip"):
        KeyframeStore(per_clip=0, ram_bytes=1, disk_bytes=0)


# ---- the reaction puts the keyframes after the cached memory ----------------------------------
class Probe:
    """The reaction VLM, keeping each prompt's parts."""

    def __init__(self, inner):
        self.inner, self.parts = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, parts, on_text=None, stop=None):
        self.parts.append(parts)
        return self.inner.generate(parts, on_text=on_text, stop=stop)


def test_retrieved_keyframes_reach_the_prompt_at_full_resolution_after_the_cached_memory():
    from response_collector import Collector

    from dispider_ros.core.memory import MemoryConfig
    from dispider_ros.core.reaction import ReactionConfig, ReactionEngine
    from dispider_ros.core.types import Frame, RetrievedClip, TriggerEvent
    from dispider_ros.models import tiny
    from dispider_ros.models.registry import load_reaction_vlm
    from dispider_ros.models.vlm_config import ReactionVLMConfig

    torch.set_num_threads(1)
    vlm = load_reaction_vlm(ReactionVLMConfig(model=tiny.resolve_model_path("tiny:qwen2_vl"), max_new_tokens=4))
    probe, sink = Probe(vlm), Collector(timeout=30.0)
    # a small budget: the first clip's frames are pooled in memory, its keyframes are not
    engine = ReactionEngine(ReactionConfig(memory=MemoryConfig(max_tokens=400, protected_frames=2),
                                           evidence_timeout_sec=0.0, keyframes_per_clip=2), sink, probe)
    rng = np.random.default_rng(5)
    try:
        encoded = {}
        for n in range(40):
            image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
            encoded[n] = vlm.encode_frame(image, camera_id="cam", stamp=0.5 * n, frame_index=n)
            engine.ingest(Frame("cam", 0.5 * n, n, image), clip_index=n // 10)
        assert engine.memory.stats()["compressions"] > 0
        clip = RetrievedClip("cam", 0, 0.0, 4.5, 0.93)
        trigger = lambda n, retrieved: TriggerEvent(  # noqa: E731
            f"t{n}", f"q{n}", "What did you see before?", "cam", "now", 1.0, 19.5, 39, 3, 15.0, 19.5,
            retrieved=retrieved)
        engine.submit(trigger(1, ()))
        plain = sink.wait_final("resp-t1")
        engine.submit(trigger(2, (clip, RetrievedClip("cam", 7, 1.0, 2.0, 0.6))))  # clip 7 was never stored
        retrieved = sink.wait_final("resp-t2")
        assert plain.extras["retrieved_clips"] == []
        assert retrieved.extras["retrieved_clips"] == [
            {"camera_id": "cam", "clip_index": 0, "start": 0.0, "end": 4.5, "score": 0.93, "keyframes": 2},
            {"camera_id": "cam", "clip_index": 7, "start": 1.0, "end": 2.0, "score": 0.6, "keyframes": 0}]
        given = probe.parts[1].retrieved
        assert [f.frame_index for f in given] == [0, 8]  # the clip's 1st and 9th frames, in time order
        for frame in given:  # as encoded: level 0, the encoder's very tokens, labelled with their time
            assert frame.level == 0 and torch.equal(frame.tokens, encoded[frame.frame_index].tokens)
        assert [(f.labelled, f.named) for f in given] == [(True, False)] * 2  # the trigger's camera: time only
        assert all(f.level > 0 for f in probe.parts[1].items if getattr(f, "frame_index", -1) in (0, 8))
        assert retrieved.extras["frames_in_prompt"] == plain.extras["frames_in_prompt"] + 2
        assert retrieved.extras["history_span_sec"] == pytest.approx(19.5)
        # the keyframes come after the memory, so its cached prefix survives: the second prompt
        # reuses all of the first one's (only the remembered question and answer are new)
        assert retrieved.extras["reused_tokens"] == vlm._assemble(probe.parts[0]).prefix_len
        second = vlm._assemble(probe.parts[1])
        assert [s >= second.prefix_len for s, f in second.frames].count(True) == 2
        text = vlm.prompt_text(probe.parts[1])
        assert text.index(vlm.config.retrieval_header) > text.rindex("<|vision_start|>", 0, text.index(vlm.config.retrieval_header))
        assert text.count("<|image_pad|>") == plain.extras["frames_in_prompt"] + 2
        assert engine.stats()["clips_stored"] == 4
    finally:
        engine.close()
        vlm.close()
