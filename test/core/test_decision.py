"""DecisionCore: queries x features -> triggers, limits, ids, resets, live config.

How `match` is made to fire (two routes, both real code paths of the core):
  1. Controlled text encoder: the `text_encoder` callable the core calls once per query
     returns, for the query's event text, the embedding of one chosen frame; any other
     text gets a vector orthogonal to every frame. So cos(query, frame) is ~1 on that
     scene and ~0 elsewhere, and the test checks the policy arithmetic end to end.
  2. Real footage + tiny SigLIP: the random-weight text tower is fine-tuned for 60 AdamW
     steps (vision tower frozen, SigLIP's own sigmoid loss with its logit scale/bias) to
     pair one caption per scene of Big Buck Bunny with that scene's frames; scenes come
     from pixel-histogram cuts, not from the model. The core then embeds the query
     through VisionEncoder.encode_texts, exactly as the decision node does. The queries
     wrap the trained captions in instructions ("Tell me when ..."), which event_text
     strips; a 60-step tower does not generalise to new wording, so none is tested.
"""
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dispider_ros.core.decision import DecisionConfig, DecisionCore
from dispider_ros.core.queries import QueryRejected
from dispider_ros.core.types import FrameFeature, QuerySpec

D = 16
VIDEOS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "videos"


def unit(v):
    return (v / np.linalg.norm(v)).astype(np.float32)


RNG = np.random.default_rng(0)
SCENE_A = unit(RNG.standard_normal(D))
_B = RNG.standard_normal(D)
SCENE_B = unit(_B - np.dot(_B, SCENE_A) * SCENE_A)  # orthogonal scenes: cos(A, B) = 0


def feature(stamp, embedding=SCENE_A, camera="cam", boundary=False, index=None, clip=0):
    return FrameFeature(camera_id=camera, stamp=stamp,
                        frame_index=int(round(stamp * 2)) if index is None else index,
                        clip_index=clip, clip_boundary=boundary, clip_similarity=0.9,
                        clip_start=0.0, embedding=embedding, frame_id="optical")


class FrameMatchingEncoder:
    """Route 1: the event text maps to a chosen frame embedding, all else orthogonal."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, texts):
        self.calls.extend(texts)
        out = []
        for text in texts:
            if text in self.table:
                out.append(self.table[text])
            else:  # orthogonal to both scenes: cos = 0 with every frame
                v = RNG.standard_normal(D)
                for s in (SCENE_A, SCENE_B):
                    v -= np.dot(v, s) * s
                out.append(unit(v))
        return np.stack(out)


def make_core(**config):
    config.setdefault("id_prefix", "t")
    config.setdefault("max_queries_per_sec", 0.0)
    encoder = FrameMatchingEncoder({"the red cup is on the table": SCENE_B})
    return DecisionCore(DecisionConfig(**config), text_encoder=encoder), encoder


def stream(core, scenes, dt=0.5, start=0.0):
    """Feed (embedding, count) runs; return the triggers."""
    triggers, t = [], start
    for embedding, count in scenes:
        for _ in range(count):
            triggers += core.on_feature(feature(t, embedding))
            t += dt
    return triggers


def test_now_query_answers_at_once_with_the_latest_frame():
    core, _ = make_core()
    core.on_feature(feature(3.0, clip=2))
    query, triggers = core.add_query(QuerySpec("q1", "What is on the table?"), now_stamp=3.2)
    assert query.mode == "now"
    (t,) = triggers
    assert (t.query_id, t.policy, t.stamp, t.frame_index, t.clip_index) == ("q1", "now", 3.0, 6, 2)
    assert (t.camera_id, t.frame_id, t.clip_start, t.clip_end, t.query_text) == \
        ("cam", "optical", 0.0, 3.0, "What is on the table?")
    assert core.active_queries() == [] and core.stats()["queries_completed"] == 1


def test_now_query_before_any_frame_fires_on_the_next_one():
    core, _ = make_core()
    _, triggers = core.add_query(QuerySpec("q1", "what is this", mode="now"), now_stamp=0.0)
    assert triggers == []
    assert [t.stamp for t in core.on_feature(feature(0.5))] == [0.5]
    assert core.on_feature(feature(1.0)) == []


def _core_at_3s():
    """A core that has seen the 2.5 and 3.0 frames of a 2 fps camera."""
    core, _ = make_core()
    for t in (2.5, 3.0):
        core.on_feature(feature(t))
    return core


def _ask_stamped(core, stamp):
    """A now question stamped `stamp`, as decision_node adds a stamped one (catch_up)."""
    _, triggers = core.add_query(QuerySpec("q1", "what is this", mode="now", stamp=stamp),
                                 now_stamp=stamp, catch_up=True)
    return triggers


def test_a_stamped_now_query_ahead_of_queued_features_waits_for_the_frame_at_its_stamp():
    # decision_node: features queued behind a question stamped 4.0 (a replay) must not have
    # it answered from the 3.0 frame; offline (catch_up off) the latest frame is current.
    core = _core_at_3s()
    triggers = _ask_stamped(core, 4.0)
    assert triggers == [] and core.waiting("q1") == ["cam"]
    assert core.on_feature(feature(3.5)) == []  # the 4.0 frame is still due
    assert [t.stamp for t in core.on_feature(feature(4.0))] == [4.0]
    assert core.waiting("q1") == [] and core.stats()["now_waits"] == 1


def test_a_stamped_now_query_fires_at_once_on_the_frame_current_at_its_stamp():
    core = _core_at_3s()
    triggers = _ask_stamped(core, 3.4)
    assert [t.stamp for t in triggers] == [3.0]  # the 3.5 frame is not due before 3.4


def test_a_waiting_now_query_is_released_on_the_newest_frame_when_the_camera_stopped():
    core = _core_at_3s()
    _ask_stamped(core, 9.0)
    assert [t.stamp for t in core.release_waiting("q1")] == [3.0]
    assert core.release_waiting("q1") == [] and core.stats()["now_waits_expired"] == 1


def test_match_fires_on_the_matching_scene_only_and_silent_otherwise():
    # smoothing 0.6: EMA 0.40 on the first B frame, 0.64 on the second -> fires at 5.5
    core, encoder = make_core(smoothing=0.6, cooldown_sec=0.0)
    core.add_query(QuerySpec("cup", "Tell me when the red cup is on the table."), now_stamp=0.0)
    core.add_query(QuerySpec("dog", "Tell me when a dog barks", mode="match"), now_stamp=0.0)
    triggers = stream(core, [(SCENE_A, 10), (SCENE_B, 10), (SCENE_A, 10)])
    assert [(t.query_id, t.stamp) for t in triggers] == [("cup", 5.5)]
    assert triggers[0].policy == "match" and triggers[0].score > 0.6
    assert encoder.calls == ["the red cup is on the table", "a dog barks"]  # once per query


def test_hysteresis_and_cooldown_hold():
    core, _ = make_core(smoothing=0.0, hysteresis=0.2, cooldown_sec=4.0)
    core.add_query(QuerySpec("cup", "tell me when the red cup is on the table"), now_stamp=0.0)
    # B stays up 3 s: one trigger (no re-arm while high); the dip re-arms, but the next
    # B run starts 3.5 s after the first trigger, inside the 4 s cooldown: it fires at 4.0.
    triggers = stream(core, [(SCENE_B, 6), (SCENE_A, 1), (SCENE_B, 6), (SCENE_A, 1), (SCENE_B, 1)])
    assert [t.stamp for t in triggers] == [0.0, 4.0]
    (later,) = stream(core, [(SCENE_A, 1), (SCENE_B, 1)], start=20.0)
    assert later.stamp == 20.5


def test_expiry_limits_cameras_cancel_and_unique_ids():
    core, _ = make_core(cooldown_sec=0.0, boundary_cooldown_sec=0.0)  # boundaries 0.5 s apart
    core.add_query(QuerySpec("exp", "narrate", expiry_sec=2.0, stamp=10.0), now_stamp=10.0)
    core.add_query(QuerySpec("two", "guide me", max_responses=2, cameras=("cam",)), now_stamp=10.0)
    core.add_query(QuerySpec("rear", "guide me", cameras=("rear",)), now_stamp=10.0)
    core.add_query(QuerySpec("gone", "guide me"), now_stamp=10.0)
    assert core.cancel("gone") is True and core.cancel("gone") is False
    fired = []
    for t in (10.5, 11.0, 12.0, 13.0):
        fired += core.on_feature(feature(t, boundary=True))
    assert [(t.query_id, t.stamp) for t in fired] == [("exp", 10.5), ("two", 10.5), ("exp", 11.0),
                                                        ("two", 11.0)]
    assert [q.query_id for q in core.active_queries()] == ["rear"]
    fired += core.on_feature(feature(13.5, camera="rear", boundary=True))
    ids = [t.trigger_id for t in fired]
    assert len(set(ids)) == len(ids) == 5 and ids[0] == "t-1"
    stats = core.stats()
    assert (stats["queries_expired"], stats["queries_completed"], stats["queries_cancelled"]) == (1, 1, 1)


def test_assigned_ids_never_collide_across_cores_namespaces_or_restarts():
    """Two robots (namespaces), each restarted, all asking id-less questions: no id twice."""
    cores = [DecisionCore(DecisionConfig(id_prefix=f"/robot{n}/decision_node-{token}",
                                         max_queries_per_sec=0.0, cooldown_sec=0.0))
             for n in (1, 2) for token in ("3fa2c1", "9b07e4")]
    cores += [DecisionCore(DecisionConfig(max_queries_per_sec=0.0, cooldown_sec=0.0)) for _ in range(2)]
    query_ids, trigger_ids = [], []
    for core in cores:
        query_ids.append(core.new_query_id())  # what decision_node names a rejected id-less query
        for _ in range(3):
            query, _ = core.add_query(QuerySpec("", "narrate", mode="boundary"), now_stamp=1.0)
            query_ids.append(query.query_id)
        trigger_ids += [t.trigger_id for t in core.on_feature(feature(1.5, boundary=True))]
    assert len(set(query_ids)) == len(query_ids) == 6 * 4 and len(trigger_ids) == 6 * 3
    assert len(set(trigger_ids)) == len(trigger_ids)
    assert query_ids[:4] == [f"/robot1/decision_node-3fa2c1-q{n}" for n in (1, 2, 3, 4)]


def test_time_going_back_resets_camera_state():
    core, _ = make_core(smoothing=0.0, cooldown_sec=100.0)
    core.add_query(QuerySpec("cup", "tell me when the red cup is on the table"), now_stamp=0.0)
    assert len(stream(core, [(SCENE_B, 2)], start=50.0)) == 1
    # bag loop: cooldown from the old timeline would block for 100 s; it is reset instead
    assert len(stream(core, [(SCENE_B, 1)], start=0.0)) == 1
    assert core.stats()["camera_resets"] == 1


def test_rejections_are_specific_and_counted():
    core = DecisionCore(DecisionConfig(max_query_chars=20, max_queries_per_sec=0))
    with pytest.raises(QueryRejected, match="needs a text encoder") as info:
        core.add_query(QuerySpec("m", "tell me when it rains"), now_stamp=0.0)
    assert info.value.reason == "no_text_encoder"
    with pytest.raises(QueryRejected, match="activation head") as info:
        core.add_query(QuerySpec("a", "x", mode="activation"), now_stamp=0.0)
    with pytest.raises(QueryRejected, match="max_query_chars 20"):
        core.add_query(QuerySpec("l", "y" * 21), now_stamp=0.0)
    with pytest.raises(TypeError, match="int"):
        core.add_query(QuerySpec("t", 5), now_stamp=0.0)
    stats = core.stats()
    assert (stats["rejected_no_text_encoder"], stats["rejected_no_activation_head"],
            stats["rejected_too_long"], stats["queries_active"]) == (1, 1, 1, 0)


def test_policy_error_is_counted_and_other_queries_still_scored():
    def wrong_dim(texts):
        return np.ones((len(texts), D + 1), np.float32)

    core = DecisionCore(DecisionConfig(id_prefix="t", cooldown_sec=0.0), text_encoder=wrong_dim)
    core.add_query(QuerySpec("m", "tell me when x"), now_stamp=0.0)
    core.add_query(QuerySpec("b", "narrate"), now_stamp=0.0)
    triggers = core.on_feature(feature(1.0, boundary=True))
    assert [t.query_id for t in triggers] == ["b"]
    assert core.stats()["policy_errors"] == 1


def test_live_config_applies_at_once_and_bad_values_change_nothing():
    core, _ = make_core(smoothing=0.0, cooldown_sec=0.0, trigger_threshold=0.999)
    core.add_query(QuerySpec("cup", "tell me when the red cup is on the table"), now_stamp=0.0)
    half = unit(SCENE_B + SCENE_A)  # cos ~0.7 with B: sigmoid(10 * 0.7 - 5) ~ 0.88
    assert stream(core, [(half, 2)]) == []
    core.set_config(trigger_threshold=0.6)
    assert len(stream(core, [(half, 1)], start=5.0)) == 1
    with pytest.raises(ValueError, match="hysteresis 2"):
        core.set_config(hysteresis=2)
    assert core.config.trigger_threshold == 0.6 and core.config.hysteresis == 0.1
    with pytest.raises(ValueError, match="max_queries_per_sec -1"):
        core.set_config(max_queries_per_sec=-1)


def test_narration_fires_on_every_scene_change_and_its_cooldown_is_live():
    """boundary_cooldown_sec (default: the minimum clip length) paces narration; a change
    inside it fires when it ends, carrying the clip of the newest change."""
    core, _ = make_core()  # shipped cooldown_sec 5: it must not hold narration back
    core.add_query(QuerySpec("n", "Narrate what happens step by step."), now_stamp=0.0)
    cuts = [(1.0, 1), (2.0, 2), (3.5, 3), (4.5, 4)]  # a clip apart: each narrated on its frame
    fired = [t for stamp, clip in cuts for t in core.on_feature(
        FrameFeature("cam", stamp, int(stamp * 2), clip, True, 0.3, stamp, SCENE_A))]
    assert [(t.policy, t.stamp, t.clip_index, t.clip_start) for t in fired] == \
        [("boundary", s, c, s) for s, c in cuts]
    core.set_config(boundary_cooldown_sec=3.0)
    assert core.config.boundary_cooldown_sec == 3.0 and core.config.cooldown_sec == 5.0
    stream_ = [(8.0, 5, True), (9.0, 6, True), (10.0, 7, True), (10.5, 7, False), (11.0, 7, False)]
    fired = [t for stamp, clip, cut in stream_ for t in core.on_feature(
        FrameFeature("cam", stamp, int(stamp * 2), clip, cut, 0.3, 10.0 if clip == 7 else stamp, SCENE_A))]
    # 8.0 fires; 9.0 and 10.0 wait; 11.0 (3 s later) narrates both, in clip 7 from 10.0
    assert [(t.stamp, t.clip_index, t.clip_start, t.clip_end) for t in fired] == \
        [(8.0, 5, 8.0, 8.0), (11.0, 7, 10.0, 11.0)]
    with pytest.raises(ValueError, match="boundary_cooldown_sec -1"):
        core.set_config(boundary_cooldown_sec=-1.0)
    assert core.config.boundary_cooldown_sec == 3.0


def test_concurrent_calls_are_serialised():
    core, _ = make_core(cooldown_sec=0.0)
    errors, done = [], threading.Event()

    def feed():
        try:
            for i in range(300):
                core.on_feature(feature(i * 0.1, boundary=i % 3 == 0))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)
        done.set()

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    for i in range(60):
        core.add_query(QuerySpec(f"q{i}", "narrate", max_responses=1), now_stamp=0.0)
        core.cancel(f"q{i - 5}")
    assert done.wait(10.0) and not errors
    thread.join(5.0)


# --- route 2: real footage and the tiny SigLIP text tower -------------------------------

CAPTIONS = ["a black screen", "a green meadow with trees", "a small stream among rocks",
            "a bird sits on a branch", "a title over a tree stump"]


def bbb_features_and_scene_starts(encoder):
    import cv2

    from dispider_ros.core.perception import PerceptionConfig, PerceptionPipeline
    from dispider_ros.core.sampler import SamplerConfig

    path = VIDEOS / "moviepy_big_buck_bunny_0_30.webm"
    if not path.is_file():
        pytest.skip(f"{path} is absent on this machine")
    pipeline = PerceptionPipeline(encoder, PerceptionConfig(sampler=SamplerConfig(2.0)))
    capture = cv2.VideoCapture(str(path))
    frames, starts, previous, last_change = [], [], None, -10.0
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        stamp = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        hist = cv2.calcHist([cv2.resize(bgr, (160, 90))], [0, 1, 2], None, [8] * 3, [0, 256] * 3).ravel()
        hist /= hist.sum()
        # a new scene where >= 30 % of pixel mass changes bins, unless the previous such
        # change was < 1 s ago (then it is the same transition, e.g. the fade-in)
        if previous is not None and 0.5 * np.abs(hist - previous).sum() > 0.3:
            if stamp - last_change > 1.0:
                starts.append(stamp)
            last_change = stamp
        previous = hist
        frame = pipeline.offer("cam", stamp, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if frame is not None:
            frames.append(frame)
    capture.release()
    return pipeline.process(frames), starts


def test_match_on_real_footage_with_a_fine_tuned_tiny_siglip_text_tower():
    from dispider_ros.models.vision import VisionEncoder, VisionEncoderConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = VisionEncoder(VisionEncoderConfig(model="tiny:siglip"))
    features, starts = bbb_features_and_scene_starts(encoder)
    assert len(starts) == len(CAPTIONS) - 1, starts  # fade-in + three cuts
    scene = np.array([sum(s <= f.stamp for s in starts) for f in features])  # (F,)
    frames = torch.from_numpy(np.stack([f.embedding for f in features]))  # (F, D)
    labels = torch.from_numpy(np.where(scene[None] == np.arange(len(CAPTIONS))[:, None], 1.0, -1.0))
    model = encoder.model
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.text_model.parameters())
    for p in params:
        p.requires_grad_(True)
    tokens = encoder.processor.tokenizer(CAPTIONS, padding="max_length", truncation=True,
                                         max_length=16, return_tensors="pt")
    scale, bias = encoder.match_calibration()
    optimiser = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(60):
        text = torch.nn.functional.normalize(model.get_text_features(input_ids=tokens["input_ids"]), dim=-1)
        loss = -torch.nn.functional.logsigmoid(labels * (scale * text @ frames.T + bias)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < 0.2 * losses[0]

    core = DecisionCore(DecisionConfig(id_prefix="r", max_queries_per_sec=0),
                        text_encoder=encoder.encode_texts, match_calibration=(scale, bias))
    core.add_query(QuerySpec("bird", "Tell me when a bird sits on a branch"), now_stamp=0.0)
    core.add_query(QuerySpec("stream", "Please let me know when: a small stream among rocks?"),
                   now_stamp=0.0)
    triggers = [t for f in features for t in core.on_feature(f)]
    by_query = {q: [t.stamp for t in triggers if t.query_id == q] for q in ("bird", "stream")}
    bird_start, bird_end = starts[2], starts[3]
    stream_start, stream_end = starts[1], starts[2]
    assert by_query["bird"] and all(bird_start <= s < bird_end for s in by_query["bird"]), by_query
    assert by_query["bird"][0] <= bird_start + 1.0  # within two sampled frames of the cut
    assert by_query["stream"] and all(stream_start <= s < stream_end for s in by_query["stream"])
    encoder.close()


# --- property: random operation sequences ----------------------------------------------

operation = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(["", "a", "b", "c"]),
              st.sampled_from(["tell me when the red cup is on the table", "narrate", "what now?",
                               "", "x\x00y", "guide me " * 40, "notify me if a dog barks"]),
              st.sampled_from(["auto", "now", "match", "boundary"]),
              st.integers(0, 3), st.sampled_from([0.0, 1.0, 5.0])),
    st.tuples(st.just("cancel"), st.sampled_from(["a", "b", "c", "zzz"])),
    st.tuples(st.just("feature"), st.floats(-5, 60, allow_nan=False), st.booleans(),
              st.sampled_from(["A", "B"]), st.sampled_from(["cam", "rear"])),
)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(operation, max_size=60))
def test_property_random_operations_keep_invariants(ops):
    core, _ = make_core(max_query_chars=200, max_queries_per_sec=3.0, cooldown_sec=1.0)
    triggers, now = [], 0.0
    for op in ops:
        if op[0] == "add":
            _, qid, text, mode, limit, expiry = op
            try:
                _, fired = core.add_query(QuerySpec(qid, text, mode=mode, max_responses=limit,
                                                    expiry_sec=expiry), now_stamp=now)
                triggers += fired
            except QueryRejected as error:
                assert error.reason in {"empty_text", "too_long", "control_characters",
                                        "rate_limited"}
        elif op[0] == "cancel":
            core.cancel(op[1])
        else:
            _, stamp, boundary, scene, camera = op
            now = stamp
            emb = SCENE_A if scene == "A" else SCENE_B
            triggers += core.on_feature(feature(stamp, emb, camera=camera, boundary=boundary))
    ids = [t.trigger_id for t in triggers]
    assert len(ids) == len(set(ids))
    assert all(0.0 <= t.score <= 1.0 and t.clip_end == t.stamp for t in triggers)
    for query in core.active_queries():
        assert query.mode != "auto" and not query.exhausted
    stats = core.stats()
    assert stats["triggers"] == len(triggers) and stats["queries_active"] == len(core.active_queries())


# --- revision: a change of evidence soon after a trigger answers again ------------------

@pytest.mark.revision
def test_a_clip_boundary_inside_the_window_revises_a_now_answer_after_its_query_completed():
    core, _ = make_core(revise_window_sec=2.0)
    core.on_feature(feature(3.0))
    _, (first,) = core.add_query(QuerySpec("q1", "What is on the table?"), now_stamp=3.0)
    assert core.active_queries() == []  # the now query completed at its trigger ...
    assert core.revision_deadline(first.trigger_id) == 5.0  # ... its answer stays revisable
    assert core.on_feature(feature(3.5)) == []  # same clip: nothing changed
    (revision,) = core.on_feature(feature(4.0, SCENE_B, boundary=True, clip=1))
    assert (revision.query_id, revision.revises_trigger_id, revision.revision_reason) == \
        ("q1", first.trigger_id, "clip_boundary")
    assert (revision.stamp, revision.frame_index, revision.clip_index, revision.policy) == \
        (4.0, 8, 1, "now")  # the new evidence frame
    assert revision.trigger_id != first.trigger_id and revision.query_text == first.query_text
    # one revision per answer: a revision opens no window, so the next cut is quiet
    assert core.on_feature(feature(4.5, SCENE_A, boundary=True, clip=2)) == []
    assert core.revision_deadline(first.trigger_id) is None
    stats = core.stats()
    assert (stats["revisions"], stats["triggers"], stats["queries_completed"]) == (1, 2, 1)


@pytest.mark.revision
def test_a_clip_boundary_outside_the_window_or_on_another_camera_revises_nothing():
    core, _ = make_core(revise_window_sec=2.0)
    core.on_feature(feature(3.0))
    core.on_feature(feature(3.0, camera="rear"))
    _, fired = core.add_query(QuerySpec("q1", "What is here?", cameras=("cam",)), now_stamp=3.0)
    assert len(fired) == 1
    assert core.on_feature(feature(4.0, boundary=True, camera="rear")) == []  # not its camera
    assert core.on_feature(feature(4.5)) == []
    assert core.on_feature(feature(5.0, boundary=True)) == []  # 2.0 s later: window [3, 5) is over
    assert core.revision_deadline(fired[0].trigger_id) is None and core.stats()["revisions"] == 0


@pytest.mark.revision
def test_a_match_score_falling_below_threshold_minus_hysteresis_revises_once():
    # smoothing 0: the score is the frame's; cos(query, A) = 0 -> sigmoid(-5) ~ 0.007 < 0.5 - 0.1
    core, _ = make_core(smoothing=0.0, cooldown_sec=0.0, revise_window_sec=2.0)
    core.add_query(QuerySpec("cup", "Tell me when the red cup is on the table."), now_stamp=0.0)
    (fired,) = stream(core, [(SCENE_B, 1)], start=10.0)  # fires at 10.0 (B matches)
    assert stream(core, [(SCENE_B, 1)], start=10.5) == []  # still matching: not armed, no revision
    (revision,) = stream(core, [(SCENE_A, 1)], start=11.0)  # the cup is gone
    assert (revision.revises_trigger_id, revision.revision_reason, revision.policy) == \
        (fired.trigger_id, "score_drop", "match")
    assert revision.score < 0.4 and revision.stamp == 11.0
    # the dip re-armed the match: it fires again on B (a new answer, revisable in turn)
    (again,) = stream(core, [(SCENE_B, 1)], start=11.5)
    assert again.revises_trigger_id == "" and core.active_queries()[0].responses == 2


@pytest.mark.revision
def test_a_match_query_that_completed_is_still_revised_on_a_score_drop():
    core, _ = make_core(smoothing=0.0, cooldown_sec=0.0)
    core.add_query(QuerySpec("cup", "Tell me when the red cup is on the table.", max_responses=1),
                   now_stamp=0.0)
    (fired,) = stream(core, [(SCENE_B, 1)])
    assert core.active_queries() == []  # max_responses reached
    (revision,) = stream(core, [(SCENE_A, 1)], start=0.5)
    assert revision.revision_reason == "score_drop" and revision.revises_trigger_id == fired.trigger_id
    assert core.stats()["queries_completed"] == 1  # a revision does not count against the limit


@pytest.mark.revision
@pytest.mark.parametrize("parameter, field, revised", [
    (True, None, True), (False, None, False), (True, False, False), (False, True, True)])
def test_revision_is_off_by_parameter_or_by_the_query_field(parameter, field, revised):
    core, _ = make_core(revise_answers=parameter)
    core.on_feature(feature(1.0))
    _, (first,) = core.add_query(QuerySpec("q1", "what is this?", mode="now", revise=field),
                                 now_stamp=1.0)
    fired = core.on_feature(feature(1.5, boundary=True, clip=1))
    assert [t.revises_trigger_id for t in fired] == ([first.trigger_id] if revised else [])


@pytest.mark.revision
def test_turning_revision_off_live_stops_pending_revisions():
    core, _ = make_core()
    core.on_feature(feature(1.0))
    core.add_query(QuerySpec("q1", "what is this?"), now_stamp=1.0)
    core.set_config(revise_answers=False)
    assert core.on_feature(feature(1.5, boundary=True, clip=1)) == []
    with pytest.raises(ValueError, match="revise_window_sec -1"):
        core.set_config(revise_window_sec=-1.0)


@pytest.mark.revision
def test_boundary_queries_are_not_revised_on_clip_boundaries_and_canceled_queries_not_at_all():
    core, _ = make_core(cooldown_sec=10.0, boundary_cooldown_sec=10.0)
    core.add_query(QuerySpec("narr", "narrate", mode="boundary"), now_stamp=0.0)
    (first,) = core.on_feature(feature(1.0, boundary=True, clip=1))
    assert core.revision_deadline(first.trigger_id) is None  # its next narration is the update
    assert core.on_feature(feature(1.5, boundary=True, clip=2)) == []  # cooldown; and no revision
    core.on_feature(feature(2.0))
    core.add_query(QuerySpec("now", "what is this?", mode="now"), now_stamp=2.0)
    core.add_query(QuerySpec("now", "what is that?", mode="now"), now_stamp=2.0)  # replaces it
    core.on_feature(feature(2.5))
    core.add_query(QuerySpec("gone", "what is here?", mode="now", max_responses=2), now_stamp=2.5)
    assert core.cancel("gone")
    fired = core.on_feature(feature(3.0, boundary=True, clip=3))
    assert [(t.query_id, t.revision_reason) for t in fired] == [("now", "clip_boundary")]
    assert fired[0].query_text == "what is that?"  # the replacing question's answer


@pytest.mark.revision
def test_a_flood_of_cuts_gives_at_most_one_revision_per_answer_and_time_going_back_forgets():
    core, _ = make_core(revise_window_sec=60.0)
    core.on_feature(feature(0.0))
    for n in range(5):
        core.add_query(QuerySpec(f"q{n}", "what is this?", mode="now"), now_stamp=0.0)
    fired = [t for i in range(1, 40) for t in core.on_feature(feature(i * 0.5, boundary=True, clip=i))]
    assert sorted(t.query_id for t in fired) == [f"q{n}" for n in range(5)]
    core.add_query(QuerySpec("late", "what is this?", mode="now"), now_stamp=20.0)
    assert core.on_feature(feature(1.0, boundary=True)) == []  # bag loop: its window is gone


@pytest.mark.revision
def test_revisable_answers_are_bounded():
    from dispider_ros.core.decision import REVISABLE_KEPT

    core, _ = make_core(max_active_queries=REVISABLE_KEPT + 10)
    core.on_feature(feature(0.0))
    first = [core.add_query(QuerySpec(f"q{n}", "what now?", mode="now"), now_stamp=0.0)[1][0]
             for n in range(REVISABLE_KEPT + 10)]
    assert core.revision_deadline(first[0].trigger_id) is None  # the oldest windows dropped
    assert core.revision_deadline(first[-1].trigger_id) == 2.0
    assert len(core.on_feature(feature(0.5, boundary=True, clip=1))) == REVISABLE_KEPT
