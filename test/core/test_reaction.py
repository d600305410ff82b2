"""Reaction engine on the tiny Qwen2-VL: streaming, pre-emption, errors, non-blocking ingest."""
import dataclasses
import math
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from response_collector import Collector as _Collector
import torch

from dispider_ros.core.memory import DialogueTurn, FrameTokens, MemoryConfig
from dispider_ros.core.reaction import COST_KEYS, ReactionConfig, ReactionEngine
from dispider_ros.core.types import ErrorCode, Frame, TriggerEvent
from dispider_ros.models import tiny
from dispider_ros.models.registry import load_reaction_vlm
from dispider_ros.models.vlm_config import ReactionVLMConfig

WAIT = 30.0  # generous upper bound for every wait; tests finish far sooner


def image(i, size=(120, 160)):
    rng = np.random.default_rng(i)
    out = np.empty(size + (3,), np.uint8)
    out[:] = rng.integers(0, 256, 3)
    out[(5 * i) % 90:(5 * i) % 90 + 30, 20:60] = rng.integers(0, 256, 3)
    return out


def frame(i, camera="cam"):
    return Frame(camera_id=camera, stamp=float(i), index=i, image=image(i))


def trigger(n, query="q1", camera="cam", stamp=0.0, text="What is on the table now?"):
    return TriggerEvent(trigger_id=f"t{n}", query_id=query, query_text=text, camera_id=camera,
                        policy="now", score=1.0, stamp=stamp, frame_index=int(stamp), clip_index=0,
                        clip_start=0.0, clip_end=stamp)


def Collector():
    return _Collector(timeout=WAIT)


@pytest.fixture(scope="module")
def vlm():
    torch.set_num_threads(1)
    model = load_reaction_vlm(ReactionVLMConfig(model=tiny.resolve_model_path("tiny:qwen2_vl"),
                                                max_new_tokens=24, min_new_tokens=24))
    yield model
    model.close()


@pytest.fixture
def engine_factory(vlm):
    engines = []

    def make(**kwargs):
        sink = Collector()
        kwargs.setdefault("evidence_timeout_sec", 0.0)
        kwargs.setdefault("memory", MemoryConfig(max_tokens=2000))
        engine = ReactionEngine(ReactionConfig(**kwargs), sink, vlm=vlm)
        engines.append(engine)
        return engine, sink

    yield make
    for engine in engines:
        engine.close()


@contextmanager
def decoder_gate(vlm, on_decode_step=2):
    """Block the worker inside a real decode step until released (a forward pre-hook)."""
    reached, release = threading.Event(), threading.Event()
    state = {"decode_steps": 0, "armed": True}

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if state["armed"] and hidden.shape[1] == 1:  # one new token: decoding, not prefill
            state["decode_steps"] += 1
            if state["decode_steps"] == on_decode_step:
                state["armed"] = False
                reached.set()
                assert release.wait(WAIT), "test never released the decoder gate"

    handle = vlm.model.model.language_model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield reached, release
    finally:
        release.set()
        handle.remove()


def test_config_validation_names_the_bad_value():
    for kwargs, name in [({"max_queue": 0}, "max_queue"), ({"prompt_cameras": "some"}, "prompt_cameras"),
                         ({"evidence_timeout_sec": -1.0}, "evidence_timeout_sec"),
                         ({"worker_threads": 0}, "worker_threads"), ({"poll_sec": 0.0}, "poll_sec")]:
        with pytest.raises(ValueError, match=name):
            ReactionConfig(**kwargs)
    with pytest.raises(TypeError, match="memory"):
        ReactionConfig(memory={"max_tokens": 5})


def test_streamed_chunks_concatenate_to_the_final_answer(engine_factory):
    engine, sink = engine_factory()
    for i in range(4):
        engine.ingest(frame(i))
    rid = engine.submit(trigger(1, stamp=3.0))
    final = sink.wait_final(rid)
    chunks = sink.chunks(rid)
    assert final.error_code == ErrorCode.OK and final.error == "" and final.text and len(chunks) >= 2
    assert [c.sequence for c in chunks] == list(range(len(chunks))) and final.sequence == len(chunks)
    assert "".join(c.text for c in chunks) == final.text
    assert final.token_count == 24 and final.ttft_sec > 0 and final.revises_response_id == ""
    # Chunks carry the tokens generated so far and the ttft, which the first chunk fixes.
    counts = [c.token_count for c in chunks]
    assert 0 < counts[0] < counts[-1] <= final.token_count and counts == sorted(counts)
    assert all(c.ttft_sec == final.ttft_sec and c.error_code == ErrorCode.OK for c in chunks)
    assert (final.trigger_id, final.query_id, final.camera_id, final.stamp) == ("t1", "q1", "cam", 3.0)
    assert final.extras["frames_in_prompt"] == 4 and final.extras["stop_reason"] == "max_new_tokens"
    assert engine.wait_idle(WAIT)
    turns = [it for it in engine.memory.snapshot() if isinstance(it, DialogueTurn)]
    assert [(t.role, t.text) for t in turns] == [("user", "What is on the table now?"), ("assistant", final.text)]
    stats = engine.stats()
    assert stats["answered"] == 1 and stats["frames_ingested"] == 4 and stats["queue_depth"] == 0
    assert stats["last_ttft_sec"] == final.ttft_sec and stats["last_tokens_per_sec"] > 0


def test_a_trigger_waiting_for_evidence_preempted_by_an_empty_trigger_id_is_superseded(engine_factory):
    """Found by the storm fuzz: a revision whose trigger id is "" still counts as one."""
    engine, sink = engine_factory(evidence_timeout_sec=WAIT)
    waiting = engine.submit(trigger(1, query="A", stamp=5.0))  # frame 5 is not there yet
    deadline = time.monotonic() + WAIT
    while not engine.stats()["busy"]:  # the worker holds it, waiting for its evidence
        assert time.monotonic() < deadline
        time.sleep(0.001)
    revision = engine.submit(TriggerEvent(
        trigger_id="", query_id="A", query_text="What now?", camera_id="cam", policy="now",
        score=1.0, stamp=0.0, frame_index=0, clip_index=0, clip_start=0.0, clip_end=0.0))
    engine.ingest(frame(5))
    stale = sink.wait_final(waiting)
    assert stale.error_code == ErrorCode.TRIGGER_SUPERSEDED and stale.extras["preempted_by"] == ""
    assert stale.extras["stop_reason"] == "preempted"
    assert sink.wait_final(revision).error_code == ErrorCode.OK


def test_newer_trigger_for_same_query_preempts_and_names_the_revised_answer(engine_factory, vlm):
    engine, sink = engine_factory()
    engine.ingest(frame(0))
    with decoder_gate(vlm) as (reached, release):
        first = engine.submit(trigger(1, query="A"))
        assert reached.wait(WAIT)
        other = engine.submit(trigger(2, query="B"))  # a different query waits its turn (FIFO)
        second = engine.submit(trigger(3, query="A"))  # revises the answer being generated
        release.set()
        finals = [sink.wait_final(r) for r in (first, second, other)]
    stale, fresh, b = finals
    assert stale.extras["stop_reason"] == "preempted" and stale.extras["preempted_by"] == "t3"
    assert stale.token_count < 24 and stale.error_code == ErrorCode.PREEMPTED and "t3" in stale.error
    assert stale.text == "".join(c.text for c in sink.chunks(first))  # what was produced
    assert fresh.revises_response_id == stale.response_id and fresh.error_code == ErrorCode.OK
    assert fresh.error == "" and fresh.token_count == 24
    assert b.revises_response_id == "" and b.error_code == ErrorCode.OK
    order = [e.response_id for e in sink.finals()]
    assert order == [first, second, other]  # the revision jumps the queue
    assert engine.stats()["preempted"] == 1
    assert engine.wait_idle(WAIT)
    answers = [it.text for it in engine.memory.snapshot() if isinstance(it, DialogueTurn) and it.role == "assistant"]
    assert answers == [fresh.text, b.text]  # the stale partial answer is not remembered


def narration(n, stamp, query="N"):
    return dataclasses.replace(trigger(n, query=query, stamp=stamp), policy="boundary",
                               query_text="Narrate what happens step by step.")


def test_a_newer_narration_waits_for_the_running_one_and_merges_with_a_waiting_one(engine_factory, vlm):
    """Each boundary trigger narrates another scene: the running narration is not stopped;
    waiting ones of the query merge into the newest (bounded), each still gets one final."""
    engine, sink = engine_factory()
    for i in range(4):
        engine.ingest(frame(i))
    with decoder_gate(vlm) as (reached, release):
        first = engine.submit(narration(1, 1.0))
        assert reached.wait(WAIT)
        other = engine.submit(trigger(2, query="B"))  # another query waits its turn
        waiting = [engine.submit(narration(n, float(n))) for n in range(3, 13)]  # 10 scene changes
        assert engine.stats()["queue_depth"] == 2  # B and one narration: bounded
        superseded = [sink.wait_final(r) for r in waiting[:-1]]
        release.set()
        running, b, merged = (sink.wait_final(r) for r in (first, other, waiting[-1]))
    assert all(f.error_code == ErrorCode.TRIGGER_SUPERSEDED for f in superseded)
    assert [f.error for f in superseded] == [f"superseded by trigger t{n + 1}" for n in range(3, 12)]
    assert running.error_code == ErrorCode.OK and running.token_count == 24  # not pre-empted
    assert running.extras["stop_reason"] == "max_new_tokens" and "merged_trigger_ids" not in running.extras
    assert merged.error_code == ErrorCode.OK and merged.revises_response_id == ""
    assert merged.extras["merged_trigger_ids"] == [f"t{n}" for n in range(3, 12)]  # oldest first
    assert b.error_code == ErrorCode.OK
    order = [e.response_id for e in sink.finals()]
    assert order == waiting[:-1] + [first, other, waiting[-1]]  # the merged one kept its place
    stats = engine.stats()
    assert (stats["preempted"], stats["superseded"], stats["answered"]) == (0, 9, 3)
    assert len(sink.finals()) == 12  # every trigger got exactly one final


def test_other_policies_and_narration_revisions_still_preempt(engine_factory, vlm):
    engine, sink = engine_factory()
    engine.ingest(frame(0))
    for first_id, newer in ((1, trigger(2, query="N")),  # a now/match trigger of the query
                            (3, dataclasses.replace(narration(4, 0.0), revises_trigger_id="t3"))):
        with decoder_gate(vlm) as (reached, release):
            first = engine.submit(narration(first_id, 0.0))
            assert reached.wait(WAIT)
            second = engine.submit(newer)
            release.set()
            stale, fresh = sink.wait_final(first), sink.wait_final(second)
        assert stale.error_code == ErrorCode.PREEMPTED and fresh.revises_response_id == stale.response_id
        assert fresh.error_code == ErrorCode.OK
        assert engine.wait_idle(WAIT)


def test_queue_overflow_drops_oldest_and_waiting_revisions_are_superseded(engine_factory, vlm, caplog):
    engine, sink = engine_factory(max_queue=2)
    engine.ingest(frame(0))
    with decoder_gate(vlm) as (reached, release):
        running = engine.submit(trigger(1, query="A"))
        assert reached.wait(WAIT)
        b = engine.submit(trigger(2, query="B"))
        c = engine.submit(trigger(3, query="C"))
        d = engine.submit(trigger(4, query="D"))  # queue full: B is dropped
        c2 = engine.submit(trigger(5, query="C"))  # replaces the waiting C
        dropped, superseded = sink.wait_final(b), sink.wait_final(c)
        assert dropped.error_code == ErrorCode.TRIGGER_DROPPED and dropped.error
        assert superseded.error_code == ErrorCode.TRIGGER_SUPERSEDED and "t5" in superseded.error
        release.set()
        for rid in (running, d, c2):
            assert sink.wait_final(rid).error_code == ErrorCode.OK
    assert "reaction queue full" in caplog.text
    stats = engine.stats()
    assert stats["dropped"] == 1 and stats["superseded"] == 1 and stats["answered"] == 3
    assert len(sink.finals()) == 5  # every trigger got exactly one final


def test_generation_error_gives_error_response_and_next_trigger_is_answered(engine_factory, vlm):
    engine, sink = engine_factory(prompt_cameras="trigger")
    engine.ingest(frame(0))
    state = {"fail": True}

    def fail_once(module, args, kwargs):
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("injected decoder failure")

    handle = vlm.model.model.language_model.layers[1].register_forward_pre_hook(fail_once, with_kwargs=True)
    try:
        failed = sink.wait_final(engine.submit(trigger(1)))
    finally:
        handle.remove()
    assert failed.error_code == ErrorCode.GENERATION_FAILED and failed.text == ""
    assert "RuntimeError: injected decoder failure" in failed.error
    assert failed.extras["stop_reason"] == "error"
    ok = sink.wait_final(engine.submit(trigger(2)))
    assert ok.error_code == ErrorCode.OK and ok.error == "" and ok.token_count == 24
    # Tokens of the wrong width (a broken encoder) fail that camera's reaction only.
    engine.memory.add_frame(FrameTokens(tokens=torch.zeros(4, 7), grid=(2, 2), camera_id="broken", stamp=1.0))
    bad = sink.wait_final(engine.submit(trigger(3, camera="broken", stamp=1.0)))
    assert bad.error_code == ErrorCode.GENERATION_FAILED and "width 7" in bad.error
    good = sink.wait_final(engine.submit(trigger(4, camera="cam", stamp=1.0)))
    assert good.error_code == ErrorCode.OK and good.token_count == 24
    assert engine.stats()["errors"] == 2


def test_a_failure_midway_keeps_what_was_produced(engine_factory, vlm):
    engine, sink = engine_factory()
    engine.ingest(frame(0))
    state = {"decode_steps": 0}

    def fail_at_step_12(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] == 1:  # decoding one token
            state["decode_steps"] += 1
            if state["decode_steps"] == 12:
                raise RuntimeError("injected decoder failure")

    handle = vlm.model.model.language_model.layers[1].register_forward_pre_hook(fail_at_step_12, with_kwargs=True)
    try:
        rid = engine.submit(trigger(1))
        failed = sink.wait_final(rid)
    finally:
        handle.remove()
    chunks = sink.chunks(rid)
    assert failed.error_code == ErrorCode.GENERATION_FAILED and chunks
    assert failed.text == "".join(c.text for c in chunks) and failed.sequence == len(chunks)
    assert failed.token_count == chunks[-1].token_count and 0 < failed.token_count <= 12
    assert failed.ttft_sec == chunks[0].ttft_sec > 0


def test_ingestion_continues_while_the_worker_decodes(engine_factory, vlm):
    engine, sink = engine_factory()
    engine.ingest(frame(0))
    with decoder_gate(vlm) as (reached, release):
        rid = engine.submit(trigger(1))
        assert reached.wait(WAIT)  # the worker is inside a decode step now
        done = threading.Event()

        def perceive():
            for i in range(1, 6):
                engine.ingest(frame(i))
            done.set()

        thread = threading.Thread(target=perceive)
        thread.start()
        assert done.wait(WAIT), "ingest blocked on the generating worker"
        assert not sink.finals(), "the answer finished before the frames were ingested"
        assert engine.stats()["frames_ingested"] == 6
        release.set()
        thread.join(WAIT)
        assert sink.wait_final(rid).error == ""


def test_frames_flow_during_an_unblocked_long_generation(vlm):
    long_vlm = load_reaction_vlm(ReactionVLMConfig(model=vlm.config.model, max_new_tokens=300,
                                                   min_new_tokens=300))
    sink = Collector()
    engine = ReactionEngine(ReactionConfig(evidence_timeout_sec=0.0), sink, vlm=long_vlm)
    try:
        engine.ingest(frame(0))
        first_chunk = threading.Event()
        rid = engine.submit(trigger(1))
        with sink.cond:
            assert sink.cond.wait_for(lambda: any(e.response_id == rid for e in sink.events), WAIT)
        first_chunk.set()
        during = 0
        i = 1
        while not any(e.final for e in sink.finals()):
            engine.ingest(frame(i))
            i += 1
            if not sink.finals():
                during += 1
        final = sink.wait_final(rid)
        assert final.token_count == 300
        assert during >= 2, f"only {during} frames ingested while 300 tokens decoded"
    finally:
        engine.close()
        long_vlm.close()


def test_a_trigger_waits_for_its_evidence_frame_by_index(engine_factory):
    engine, sink = engine_factory(evidence_timeout_sec=WAIT)
    engine.ingest(frame(0))
    rid = engine.submit(trigger(1, stamp=1.0))  # over DDS the trigger may beat its frame
    engine.ingest(frame(1))
    final = sink.wait_final(rid)
    assert final.extras["frames_in_prompt"] == 2 and final.extras["evidence_in_memory"]
    assert engine.stats()["evidence_missing"] == 0


def test_a_missing_evidence_frame_is_answered_after_the_timeout_and_counted(engine_factory):
    engine, sink = engine_factory(evidence_timeout_sec=0.05)
    engine.ingest(frame(0))
    final = sink.wait_final(engine.submit(trigger(1, stamp=1.0)))  # frame 1 never comes
    assert not final.extras["evidence_in_memory"] and final.text
    stats = engine.stats()
    assert stats["evidence_waits"] == 1 and stats["evidence_missing"] == 1


def test_a_clock_jump_clears_only_that_cameras_memory(engine_factory):
    engine, _ = engine_factory()
    for i in range(3):
        engine.ingest(frame(10 + i, camera="a"))
        engine.ingest(Frame(camera_id="b", stamp=10.0 + i, index=i, image=image(i)))
    engine.ingest(Frame(camera_id="a", stamp=1.0, index=3, image=image(3)))  # a's bag looped
    cameras = [(it.camera_id, it.stamp) for it in engine.memory.snapshot()]
    assert cameras.count(("a", 1.0)) == 1 and sum(c == "a" for c, _ in cameras) == 1
    assert sum(c == "b" for c, _ in cameras) == 3 and engine.stats()["memory_clears"] == 1


def test_bad_input_and_close(engine_factory):
    engine, sink = engine_factory()
    with pytest.raises(ValueError, match="uint8"):
        engine.ingest(Frame(camera_id="cam", stamp=0.0, index=0, image=np.zeros((8, 8, 3), np.float32)))
    with pytest.raises(TypeError):
        engine.submit("what is this")
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(trigger(1))


def test_close_stops_the_running_answer_and_answers_waiting_triggers(engine_factory, vlm):
    engine, sink = engine_factory()
    engine.ingest(frame(0))
    with decoder_gate(vlm) as (reached, release):
        running = engine.submit(trigger(1, query="A"))
        assert reached.wait(WAIT)
        waiting = engine.submit(trigger(2, query="B"))
        closer = threading.Thread(target=engine.close)
        closer.start()
        assert sink.wait_final(waiting).error_code == ErrorCode.SHUTDOWN
        release.set()
        closer.join(WAIT)
    stopped = sink.wait_final(running)
    assert stopped.extras["stop_reason"] == "stopped" and stopped.token_count < 24
    assert stopped.error_code == ErrorCode.SHUTDOWN and stopped.error
    assert len(sink.finals()) == 2


def test_cancel_stops_the_running_answer_within_one_decode_step_and_ends_waiting_ones(engine_factory, vlm):
    engine, sink = engine_factory()
    engine.ingest(frame(0))
    step = 3  # the worker is held inside the forward pass of decode step 3 (token 4)
    with decoder_gate(vlm, on_decode_step=step) as (reached, release):
        running = engine.submit(trigger(1, query="A"))
        assert reached.wait(WAIT)
        other = engine.submit(trigger(2, query="B"))
        waiting = engine.submit(trigger(3, query="C"))
        assert engine.cancel("C") == 1  # only waiting: never starts
        assert sink.wait_final(waiting).error_code == ErrorCode.CANCELED
        assert engine.cancel("A") == 1 and engine.cancel("A") == 0  # a second cancel finds nothing
        release.set()
        stopped, answered = sink.wait_final(running), sink.wait_final(other)
    # The forward in flight finishes its token; the stop criterion ends generation right after it.
    assert stopped.token_count == step + 1, stopped.token_count
    assert stopped.error_code == ErrorCode.CANCELED and stopped.extras["stop_reason"] == "canceled"
    assert stopped.text == "".join(c.text for c in sink.chunks(running))  # what was produced
    assert answered.error_code == ErrorCode.OK and answered.token_count == 24  # other queries unharmed
    assert [e.response_id for e in sink.finals()] == [waiting, running, other]
    assert engine.wait_idle(WAIT) and engine.stats()["canceled"] == 2
    answers = [it.text for it in engine.memory.snapshot() if isinstance(it, DialogueTurn) and it.role == "assistant"]
    assert answers == [answered.text]  # the canceled partial answer is not remembered


def test_every_final_says_what_it_cost_and_stats_hold_the_last(engine_factory, vlm):
    engine, sink = engine_factory(remember_dialogue=False)
    assert math.isnan(engine.stats()["last_history_span_sec"]) and engine.stats()["last_prompt_tokens"] == 0
    for i in (1, 2, 3):
        engine.ingest(frame(i))
    first = sink.wait_final(engine.submit(trigger(1, query="A", stamp=3.0)))
    cost = {k: first.extras[k] for k in COST_KEYS}
    assert cost["frames_in_prompt"] == 3 and cost["history_span_sec"] == 2.0
    frame_tokens = sum(it.n_tokens for it in engine.memory.snapshot())
    assert cost["prompt_tokens"] > frame_tokens
    assert cost["prompt_tokens"] == cost["prefill_tokens"] + cost["reused_tokens"]
    # The same prompt again: its KV prefix is reused, and the last values move to it.
    again = sink.wait_final(engine.submit(trigger(2, query="B", stamp=3.0)))
    assert again.extras["prompt_tokens"] == cost["prompt_tokens"] and again.extras["reused_tokens"] > 0
    assert again.extras["prefill_tokens"] == again.extras["prompt_tokens"] - again.extras["reused_tokens"]
    stats = engine.stats()
    assert {k: stats[f"last_{k}"] for k in COST_KEYS} == {k: again.extras[k] for k in COST_KEYS}


def test_the_history_span_counts_only_the_trigger_cameras_frames(engine_factory, vlm):
    engine, sink = engine_factory()  # prompt_cameras "all": both cameras in the prompt
    engine.ingest(Frame(camera_id="other", stamp=0.5, index=0, image=image(0)))  # its own clock
    for i in (2, 3, 5):
        engine.ingest(frame(i))
    final = sink.wait_final(engine.submit(trigger(1, stamp=5.0)))
    assert final.extras["frames_in_prompt"] == 4 and final.extras["history_span_sec"] == 3.0
    # No frame of its camera in the prompt: no span.
    final = sink.wait_final(engine.submit(trigger(2, query="q2", camera="none", stamp=5.0)))
    assert final.extras["frames_in_prompt"] == 4 and math.isnan(final.extras["history_span_sec"])


def test_a_final_that_never_reached_the_model_cost_nothing(engine_factory, vlm):
    engine, sink = engine_factory(max_queue=1)
    engine.ingest(frame(0))
    with decoder_gate(vlm) as (reached, release):
        running = engine.submit(trigger(1, query="A"))
        assert reached.wait(WAIT)
        dropped = engine.submit(trigger(2, query="B"))
        engine.submit(trigger(3, query="C"))  # queue full: B is dropped
        final = sink.wait_final(dropped)
        release.set()
        assert sink.wait_final(running).error_code == ErrorCode.OK
    assert final.error_code == ErrorCode.TRIGGER_DROPPED
    assert {k: final.extras[k] for k in COST_KEYS if k != "history_span_sec"} == dict.fromkeys(
        ["prompt_tokens", "reused_tokens", "prefill_tokens", "frames_in_prompt"], 0)
    assert math.isnan(final.extras["history_span_sec"])


def test_a_trigger_that_arrives_after_its_querys_cancel_is_canceled_not_answered(engine_factory):
    """Triggers and cancels travel on two topics: a trigger fired just before the cancel can
    arrive after it. Evidence up to the cancel's stamp ends at once as CANCELED; a later
    trigger of a query that reuses the id is answered."""
    engine, sink = engine_factory()
    engine.ingest(frame(0))
    assert engine.cancel("A", up_to_stamp=2.0) == 0  # nothing of A here yet
    late = sink.wait_final(engine.submit(trigger(1, query="A", stamp=1.5)))
    assert late.error_code == ErrorCode.CANCELED and late.token_count == 0
    assert late.extras["stop_reason"] == "not_started"
    other = sink.wait_final(engine.submit(trigger(2, query="B", stamp=1.5)))
    reused = sink.wait_final(engine.submit(trigger(3, query="A", stamp=2.5)))
    assert other.error_code == ErrorCode.OK and reused.error_code == ErrorCode.OK
    assert engine.wait_idle(WAIT) and engine.stats()["canceled"] == 1


# --- revision: a trigger that names the trigger whose answer it revises -----------------

def revision(n, revises, query="q1", stamp=0.0, reason="clip_boundary"):
    import dataclasses

    return dataclasses.replace(trigger(n, query=query, stamp=stamp), revises_trigger_id=revises,
                               revision_reason=reason)


@pytest.mark.revision
def test_a_revision_of_a_finished_answer_names_it_on_every_event(engine_factory):
    engine, sink = engine_factory()
    for i in range(3):
        engine.ingest(frame(i))
    first = sink.wait_final(engine.submit(trigger(1, stamp=1.0)))
    assert first.error_code == ErrorCode.OK and "revision_reason" not in first.extras
    rid = engine.submit(revision(2, "t1", stamp=2.0))
    final = sink.wait_final(rid)
    chunks = sink.chunks(rid)
    assert final.error_code == ErrorCode.OK and final.revises_response_id == "resp-t1" == first.response_id
    assert chunks and all(c.revises_response_id == "resp-t1" for c in chunks)
    assert final.extras["revision_reason"] == "clip_boundary" and final.stamp == 2.0
    assert [e.response_id for e in sink.finals()] == [first.response_id, rid]  # one final each
    assert engine.stats()["preempted"] == 0  # nothing was running: the first answer stands


@pytest.mark.revision
def test_a_revision_of_a_running_answer_preempts_it(engine_factory, vlm):
    engine, sink = engine_factory()
    engine.ingest(frame(0))
    with decoder_gate(vlm) as (reached, release):
        first = engine.submit(trigger(1))
        assert reached.wait(WAIT)
        second = engine.submit(revision(2, "t1", reason="score_drop"))
        release.set()
        stale, fresh = sink.wait_final(first), sink.wait_final(second)
    assert stale.error_code == ErrorCode.PREEMPTED and stale.extras["preempted_by"] == "t2"
    assert stale.revises_response_id == "" and "revision_reason" not in stale.extras
    assert fresh.error_code == ErrorCode.OK and fresh.revises_response_id == stale.response_id
    assert fresh.extras["revision_reason"] == "score_drop"
    assert engine.wait_idle(WAIT) and len(sink.finals()) == 2
    answers = [it.text for it in engine.memory.snapshot()
               if isinstance(it, DialogueTurn) and it.role == "assistant"]
    assert answers == [fresh.text]  # the pre-empted partial answer is not remembered


@pytest.mark.revision
def test_a_revision_of_a_waiting_answer_supersedes_it_and_still_names_it(engine_factory, vlm):
    engine, sink = engine_factory()
    engine.ingest(frame(0))
    with decoder_gate(vlm) as (reached, release):
        busy = engine.submit(trigger(1, query="other"))
        assert reached.wait(WAIT)
        waiting = engine.submit(trigger(2))
        rid = engine.submit(revision(3, "t2"))
        release.set()
        stale, fresh = sink.wait_final(waiting), sink.wait_final(rid)
        sink.wait_final(busy)
    assert stale.error_code == ErrorCode.TRIGGER_SUPERSEDED
    assert fresh.revises_response_id == "resp-t2" and fresh.error_code == ErrorCode.OK
    assert engine.wait_idle(WAIT) and len(sink.finals()) == 3
