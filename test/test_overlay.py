"""The overlay drawing and its state, without ROS: text lands in a top and a bottom band,
the rest of the frame is untouched, odd text is drawn (folded to ASCII), and the state
follows queries, triggers, chunks, finals, cancels and expiry as the reaction node hears them."""
import cv2
import numpy as np
import pytest

from dispider_ros.core.types import ErrorCode, ResponseEvent, TriggerEvent
from dispider_ros.overlay import (FONT, OverlayConfig, OverlayState, OverlayView, answer_lines,
                                  draw, printable, wrap)

RNG = np.random.default_rng(0)
FRAME = RNG.integers(0, 256, (480, 640, 3), dtype=np.uint8)  # noise: any change shows
ODD = ("caf\u00e9 \u2014 \u201cquoted\u201d \u4f60\u597d \U0001f600 \u202eevil\u202c "
       "tab\there\x00nul\nnewline " + "x" * 500)


def trigger(query_id="q1", text="What is on the table?", policy="now", score=1.0, stamp=12.5):
    return TriggerEvent(trigger_id=f"t-{query_id}", query_id=query_id, query_text=text,
                        camera_id="/ns/image", policy=policy, score=score, stamp=stamp,
                        frame_index=3, clip_index=1, clip_start=10.0, clip_end=stamp)


def chunk(text, sequence, response_id="r1", query_id="q1"):
    return ResponseEvent(response_id, f"t-{query_id}", query_id, "/ns/image", 12.5, text,
                         final=False, sequence=sequence)


def final(text, response_id="r1", query_id="q1", code=ErrorCode.OK):
    return ResponseEvent(response_id, f"t-{query_id}", query_id, "/ns/image", 12.5, text,
                         final=True, sequence=1, error_code=code)


def changed_rows(before, after):
    return np.flatnonzero((before != after).any(axis=(1, 2)))


def test_text_is_drawn_in_a_top_and_a_bottom_band_and_the_rest_is_untouched():
    view = OverlayView(questions=("[now] What is on the table?", "[match] Tell me when it rains"),
                       trigger="trigger now score 1.00 at t=12.50s /ns/image",
                       answer="A red cup and a laptop.", answer_state="streaming")
    raw = FRAME.copy()
    out = draw(raw, view)
    assert np.array_equal(raw, FRAME)  # drawn on a copy
    assert out.shape == FRAME.shape and out.dtype == np.uint8
    rows = changed_rows(FRAME, out)
    top, bottom = rows[rows < 240], rows[rows >= 240]
    # Two solid bands: rows 0..k at the top, rows m..479 at the bottom, nothing between.
    assert top[0] == 0 and np.array_equal(top, np.arange(top[-1] + 1))
    assert bottom[-1] == 479 and np.array_equal(bottom, np.arange(bottom[0], 480))
    assert 3 * 14 <= len(top) <= 240 and 14 <= len(bottom) <= 240
    assert np.array_equal(out[top[-1] + 1:bottom[0]], FRAME[top[-1] + 1:bottom[0]])
    # Inside a band, text pixels are the bright ones: not just the darkened frame.
    darkened = FRAME[:top[-1] + 1] >> 1
    text_pixels = (out[:top[-1] + 1] != darkened).any(axis=2).sum()
    assert text_pixels > 500


def test_nothing_to_say_still_marks_the_frame():
    out = draw(FRAME, OverlayView())
    rows = changed_rows(FRAME, out)
    assert rows[0] == 0 and rows[-1] < 60  # "no questions", one line at the top


def test_odd_text_is_drawn_folded_to_ascii():
    assert printable("caf\u00e9 \u2014 \u201cquoted\u201d") == 'cafe - "quoted"'
    assert printable("\u4f60\u597d \U0001f600") == "?? ?"  # no ASCII look-alike: '?'
    assert printable("a\x00b\tc\nd \u202eevil\u202c") == "a b c d evil"  # controls never drawn
    assert printable(ODD).isascii()
    view = OverlayView(questions=(ODD, "", "\U0001f600" * 40), trigger=ODD, answer=ODD,
                       answer_state=ErrorCode.GENERATION_FAILED.name)
    for shape in ((480, 640, 3), (120, 160, 3), (24, 32, 3), (1080, 1920, 3)):
        raw = RNG.integers(0, 256, shape, dtype=np.uint8)
        out = draw(raw, view)
        assert out.shape == shape and not np.array_equal(out, raw)
        height = shape[0]
        # Each band stays within half the frame (a tiny frame: one line each).
        assert len(changed_rows(raw[:height // 2], out[:height // 2])) <= height // 2


def test_wrapped_lines_fit_the_width_and_keep_every_word():
    text = " ".join(["streaming", "answers", "wrap", "at", "word", "boundaries,"] * 30)
    for scale, thickness, width in ((0.5, 1, 620), (0.35, 1, 150), (1.5, 2, 1880)):
        lines = wrap(text, scale, thickness, width)
        assert len(lines) > 1 and " ".join(lines) == text
        assert all(cv2.getTextSize(line, FONT, scale, thickness)[0][0] <= width for line in lines)
    cut = wrap("y" * 400, 0.5, 1, 300)  # a word wider than the line is cut, not overflowing
    assert len(cut) == 1 and cut[0].endswith("...")
    assert cv2.getTextSize(cut[0], FONT, 0.5, 1)[0][0] <= 300


def test_a_long_answer_shows_its_newest_words_within_the_line_limit():
    words = [f"word{i}" for i in range(400)]
    view = OverlayView(answer=" ".join(words), answer_state="streaming")
    lines = answer_lines(view, 4, 0.5, 1, 620, 3)
    assert len(lines) == 4 and lines[0].startswith("A (streaming): ... ")
    assert lines[-1].endswith("word399")
    shown = " ".join(lines).split(" ... ", 1)[1].split()
    assert shown == words[-len(shown):] and len(shown) > 20  # a contiguous tail, lines filled
    short = answer_lines(OverlayView(answer="A red cup."), 4, 0.5, 1, 620, 3)
    assert short == ["A: A red cup."]


def test_state_follows_a_now_question_from_trigger_to_final():
    state = OverlayState()
    state.on_trigger(trigger())
    view = state.view(12.5)
    assert view.questions == ("[now] What is on the table?",)
    assert view.trigger.startswith("trigger now score 1.00 at t=12.50s /ns/image")
    for i, text in enumerate(["A red", " cup and", " a laptop."]):
        state.on_response(chunk(text, i))
    view = state.view(13.0)
    assert (view.answer, view.answer_state) == ("A red cup and a laptop.", "streaming")
    state.on_response(final("A red cup and a laptop."))
    view = state.view(13.5)
    assert view.questions == ()  # a `now` question ends with its answer ...
    assert (view.answer, view.answer_state) == ("A red cup and a laptop.", "")  # ... which stays


def test_topic_questions_wait_for_their_trigger_expire_and_cancel():
    state = OverlayState()
    state.view(100.0)  # the latest frame: "now" for a query stamped 0
    state.on_query("", "Tell me when the person picks up the cup", expiry_sec=30.0)
    state.on_query("mine", "Narrate what happens", mode="boundary", stamp=100.0)
    assert state.view(101.0).questions == ("[boundary] Narrate what happens",
                                           "[match] Tell me when the person picks up the cup")
    # The decision node assigned an id: the trigger carries it and the same text.
    state.on_trigger(trigger("/ns/decision_node-ab12cd-q1", "Tell me when the person picks up "
                             "the cup", policy="match", score=0.61, stamp=110.0))
    state.on_response(final("They picked it up.", query_id="/ns/decision_node-ab12cd-q1"))
    view = state.view(111.0)
    assert view.questions[0] == "[match] Tell me when the person picks up the cup"  # proactive: stays
    assert len(view.questions) == 2 and "score 0.61" in view.trigger
    assert state.view(130.0).questions == ("[boundary] Narrate what happens",)  # expired at 100 + 30
    state.on_cancel("mine")
    assert state.view(131.0).questions == ()


def test_max_responses_and_the_question_limits():
    state = OverlayState(OverlayConfig(max_questions=2, max_tracked=3))
    state.on_query("q1", "Tell me when a car passes", max_responses=2)
    for n in range(2):
        state.on_trigger(trigger("q1", "Tell me when a car passes", policy="match"))
        assert state.view(1.0).questions == ("[match] Tell me when a car passes",)
        state.on_response(final(f"car {n}", response_id=f"r{n}"))
    assert state.view(2.0).questions == ()  # its two answers are final
    for n in range(5):
        state.on_query(f"b{n}", f"Narrate {n}", mode="boundary")
    view = state.view(3.0)
    assert view.questions == ("[boundary] Narrate 4", "[boundary] Narrate 3")
    assert view.more_questions == 1  # 3 remembered at most, 2 drawn


def test_a_final_that_never_streamed_leaves_the_streaming_answer_on_screen():
    state = OverlayState()
    state.on_trigger(trigger())
    state.on_response(chunk("Two people", 0))
    state.on_response(final("", response_id="r-dropped", code=ErrorCode.TRIGGER_DROPPED))
    assert (state.view(1.0).answer, state.view(1.0).answer_state) == ("Two people", "streaming")
    state.on_response(final("Two people", code=ErrorCode.CANCELED))
    assert (state.view(1.0).answer, state.view(1.0).answer_state) == ("Two people", "CANCELED")


def test_bad_input_is_refused_with_its_shape():
    with pytest.raises(ValueError, match="uint8"):
        draw(FRAME.astype(np.float32), OverlayView())
    with pytest.raises(ValueError, match="max_questions 0"):
        OverlayConfig(max_questions=0)
