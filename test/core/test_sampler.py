"""FrameSampler (source-stamp sampling, rejections, clock jumps) and LatestSlot."""
import math
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispider_ros.core.sampler import FrameSampler, LatestSlot, RejectedFrame, SamplerConfig

IMAGE = np.zeros((4, 6, 3), np.uint8)


def run(sampler, stamps, camera="cam"):
    return [f for f in (sampler.offer(camera, s, IMAGE) for s in stamps) if f is not None]


def test_samples_on_a_fixed_grid_of_source_time():
    sampler = FrameSampler(SamplerConfig(sample_fps=2.0))
    stamps = [i / 30.0 for i in range(300)]  # 10 s at 30 fps
    frames = run(sampler, stamps)
    # 0, 0.5, ... 9.5: the first frame at or after each grid point
    assert len(frames) == 20
    for k, frame in enumerate(frames):
        assert frame.index == k
        assert 0.5 * k - 1e-6 <= frame.stamp < 0.5 * k + 1 / 30.0
    stats = sampler.stats("cam")
    assert (stats.offered, stats.sampled, stats.dropped) == (300, 20, 280)


def test_average_rate_exact_for_an_odd_source_rate():
    sampler = FrameSampler(SamplerConfig(sample_fps=3.0))
    frames = run(sampler, [i / 29.97 for i in range(2997)])  # 100 s
    assert len(frames) == 300


def test_never_reads_the_wall_clock(monkeypatch):
    def boom():
        raise AssertionError("wall clock used")

    for name in ("time", "monotonic", "perf_counter"):
        monkeypatch.setattr(time, name, boom)
    frames = run(FrameSampler(SamplerConfig(sample_fps=1.0)), [100.0, 100.5, 101.0, 101.2, 102.0])
    assert [f.stamp for f in frames] == [100.0, 101.0, 102.0]


def test_gap_restarts_the_grid_without_a_burst():
    sampler = FrameSampler(SamplerConfig(sample_fps=2.0))
    frames = run(sampler, [0.0, 0.5, 10.2, 10.3, 10.5, 10.7])
    assert [f.stamp for f in frames] == [0.0, 0.5, 10.2, 10.7]


def test_cameras_are_independent_and_frame_fields_pass_through():
    sampler = FrameSampler(SamplerConfig(sample_fps=1.0))
    a = sampler.offer("a", 5.0, IMAGE, frame_id="optical_a")
    b = sampler.offer("b", 5.2, IMAGE)
    assert a.camera_id == "a" and a.frame_id == "optical_a" and a.index == 0 and a.image is IMAGE
    assert b is not None and b.index == 0
    assert sampler.offer("a", 5.5, IMAGE) is None
    assert sampler.stats("b").dropped == 0 and sampler.stats("a").dropped == 1


@pytest.mark.parametrize("stamp", [math.nan, math.inf, -math.inf, "soon", None])
def test_bad_stamp_is_rejected_and_counted(stamp):
    sampler = FrameSampler()
    with pytest.raises(RejectedFrame, match="stamp") as info:
        sampler.offer("cam", stamp, IMAGE)
    assert info.value.reason == "bad_stamp"
    assert sampler.stats("cam").rejected == {"bad_stamp": 1}


@pytest.mark.parametrize("image", [np.zeros((4, 6), np.uint8), np.zeros((4, 6, 3), np.float32),
                                   np.zeros((0, 6, 3), np.uint8), np.zeros((4, 6, 4), np.uint8), "x"])
def test_bad_image_is_rejected(image):
    sampler = FrameSampler()
    with pytest.raises(RejectedFrame, match="uint8") as info:
        sampler.offer("cam", 1.0, image)
    assert info.value.reason == "bad_image"


def test_small_backward_step_and_duplicate_are_rejected_as_non_monotonic():
    sampler = FrameSampler(SamplerConfig(sample_fps=2.0, max_backward_jump_sec=1.0))
    run(sampler, [10.0, 10.1])
    for stamp in (10.1, 9.5):
        with pytest.raises(RejectedFrame, match="not after") as info:
            sampler.offer("cam", stamp, IMAGE)
        assert info.value.reason == "non_monotonic"
    assert sampler.stats("cam").rejected == {"non_monotonic": 2}
    assert sampler.offer("cam", 10.5, IMAGE) is not None  # state untouched by rejections


def test_large_backward_jump_resets_and_reports():
    calls = []
    sampler = FrameSampler(SamplerConfig(sample_fps=2.0, max_backward_jump_sec=1.0),
                           on_reset=lambda *args: calls.append(args))
    first = run(sampler, [20.0, 20.5, 21.0])
    again = sampler.offer("cam", 0.0, IMAGE)  # bag loop
    assert calls == [("cam", 21.0, 0.0)]
    assert again is not None and again.index == len(first)  # indices stay unique
    assert sampler.stats("cam").resets == 1
    assert [f.stamp for f in run(sampler, [0.2, 0.5, 0.9, 1.0])] == [0.5, 1.0]


def test_set_sample_fps_live():
    sampler = FrameSampler(SamplerConfig(sample_fps=1.0))
    run(sampler, [0.0])
    sampler.set_sample_fps(4.0)
    assert [f.stamp for f in run(sampler, [0.1, 0.25, 0.3, 0.5, 0.6, 0.75])] == [0.25, 0.5, 0.75]
    with pytest.raises(ValueError, match="sample_fps -1"):
        sampler.set_sample_fps(-1)
    assert sampler.config.sample_fps == 4.0


@pytest.mark.parametrize("kwargs, match", [({"sample_fps": 0}, "sample_fps 0"),
                                           ({"sample_fps": math.nan}, "sample_fps nan"),
                                           ({"max_backward_jump_sec": -1}, "max_backward_jump_sec -1")])
def test_config_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig(**kwargs)


stamps_strategy = st.lists(st.one_of(
    st.floats(min_value=-5, max_value=50, allow_nan=False), st.just(math.nan), st.just(math.inf)),
    max_size=200)


@settings(max_examples=300, deadline=None)
@given(stamps=stamps_strategy, fps=st.floats(min_value=0.5, max_value=30))
def test_property_counters_add_up_and_samples_are_spaced(stamps, fps):
    sampler = FrameSampler(SamplerConfig(sample_fps=fps, max_backward_jump_sec=2.0))
    epoch = []
    for stamp in stamps:
        before = sampler.stats("cam").resets
        try:
            frame = sampler.offer("cam", stamp, IMAGE)
        except RejectedFrame:
            continue
        if sampler.stats("cam").resets != before:
            epoch = []
        if frame is not None:
            # Grid sampling: strictly increasing, and any two samples two apart are at
            # least one period apart (so the rate never exceeds sample_fps on average).
            if epoch:
                assert frame.stamp > epoch[-1]
            if len(epoch) >= 2:
                assert frame.stamp - epoch[-2] >= 1.0 / fps - 1e-5
            epoch.append(frame.stamp)
    s = sampler.stats("cam")
    assert s.offered == len(stamps) == s.sampled + s.dropped + sum(s.rejected.values())


def test_latest_slot_overwrites_and_counts():
    slot = LatestSlot()
    assert slot.get(timeout=0.01) is None
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert slot.overwritten == 2 and len(slot) == 1
    assert slot.get(timeout=0) == 3 and len(slot) == 0


def test_latest_slot_hands_items_across_threads_and_close_wakes_reader():
    slot = LatestSlot()
    received, done = [], threading.Event()

    def reader():
        while True:
            item = slot.get(timeout=5.0)
            if item is None:
                break
            received.append(item)
        done.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    for i in range(200):
        slot.put(i)
    deadline = time.monotonic() + 5.0
    while (not received or received[-1] != 199) and time.monotonic() < deadline:
        threading.Event().wait(0.001)
    slot.close()
    assert done.wait(5.0)
    assert received[-1] == 199 and received == sorted(received)
    assert len(received) + slot.overwritten == 200


# ---- stamp-first sampling: take() before decoding, frame()/discard() after -------------
class Message:
    """An undecoded camera message: decode() is what a node's conversion costs."""

    decoded = 0

    def __init__(self, stamp):
        self.stamp = stamp

    def decode(self):
        Message.decoded += 1
        return IMAGE


def test_take_samples_on_stamps_alone_exactly_like_offer():
    stamps = [i / 30.0 for i in range(300)] + [0.0] + [i / 7.0 for i in range(1, 40)]
    by_offer = FrameSampler(SamplerConfig(sample_fps=2.0))
    by_take = FrameSampler(SamplerConfig(sample_fps=2.0))
    offered = [(f.index, f.stamp) for f in run(by_offer, stamps)]
    taken = [(i, s) for s, i in ((s, by_take.take("cam", s)) for s in stamps) if i is not None]
    assert taken == offered
    assert by_take.stats("cam") == by_offer.stats("cam")


def test_only_sampled_messages_are_ever_decoded():
    """The node's intake loop: take() on the stamp, park due messages, decode on a worker."""
    sampler, slot = FrameSampler(SamplerConfig(sample_fps=2.0)), LatestSlot()
    Message.decoded = 0
    built = []

    def worker():
        while True:
            item = slot.get(timeout=5.0)
            if item is None:
                return
            message, index = item
            built.append(sampler.frame("cam", message.stamp, index, message.decode()))

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    for i in range(600):  # 20 s at 30 fps
        message = Message(i / 30.0)
        index = sampler.take("cam", message.stamp)
        if index is not None:
            slot.put((message, index))
    deadline = time.monotonic() + 5.0
    while len(built) + slot.overwritten < 40 and time.monotonic() < deadline:
        time.sleep(0.005)
    slot.close()
    thread.join(5.0)
    stats = sampler.stats("cam")
    assert (stats.offered, stats.sampled) == (600, 40)
    assert Message.decoded == len(built) == 40 - slot.overwritten
    assert all(abs(f.stamp * 2 - round(f.stamp * 2)) < 1e-6 for f in built)  # grid points only


def test_frame_checks_the_decoded_image_and_discard_reopens_the_grid_point():
    sampler = FrameSampler(SamplerConfig(sample_fps=2.0))
    index = sampler.take("cam", 0.0)
    with pytest.raises(RejectedFrame, match="uint8") as info:
        sampler.frame("cam", 0.0, index, np.zeros((4, 6), np.uint8))
    assert info.value.reason == "bad_image"
    stats = sampler.stats("cam")
    assert (stats.offered, stats.sampled, stats.rejected) == (1, 0, {"bad_image": 1})
    # The next frame takes the undecodable one's place instead of waiting a period.
    assert sampler.take("cam", 0.1) == index + 1
    assert sampler.take("cam", 0.2) is None
    sampler.discard("cam", sampler.take("cam", 0.6), "image_bad_encoding")
    assert sampler.take("cam", 0.65) is not None  # re-opened again
    stats = sampler.stats("cam")
    assert stats.offered == stats.sampled + stats.dropped + sum(stats.rejected.values())


def test_discard_after_a_later_grant_leaves_the_grid_alone():
    sampler = FrameSampler(SamplerConfig(sample_fps=2.0))
    first = sampler.take("cam", 0.0)
    assert sampler.take("cam", 0.5) == first + 1
    sampler.discard("cam", first, "image_conversion")  # the worker was behind
    assert sampler.take("cam", 0.6) is None and sampler.take("cam", 1.0) == first + 2


def test_clock_jump_is_reported_when_its_first_frame_is_built_and_only_for_that_camera():
    calls = []
    sampler = FrameSampler(SamplerConfig(sample_fps=2.0, max_backward_jump_sec=1.0),
                           on_reset=lambda *args: calls.append(args))
    before = [sampler.take("a", s) for s in (20.0, 20.5)]
    other = sampler.take("b", 20.0)
    after = sampler.take("a", 3.0)  # bag loop on camera a
    assert after == before[-1] + 1 and calls == []  # nothing built yet
    sampler.frame("a", 20.5, before[-1], IMAGE)  # an older frame still in the worker's hands
    assert calls == []
    sampler.frame("a", 3.0, after, IMAGE)
    assert calls == [("a", 20.5, 3.0)]
    sampler.frame("b", 20.0, other, IMAGE)
    assert calls == [("a", 20.5, 3.0)] and sampler.stats("b").resets == 0
    assert sampler.take("b", 20.5) is not None  # camera b's grid untouched


def test_jump_frame_overwritten_before_it_was_built_still_reports_the_reset():
    calls = []
    sampler = FrameSampler(SamplerConfig(sample_fps=2.0), on_reset=lambda *args: calls.append(args))
    sampler.take("cam", 50.0)
    sampler.take("cam", 1.0)  # jump: due, then overwritten in the mailbox by the next due one
    later = sampler.take("cam", 1.5)
    sampler.frame("cam", 1.5, later, IMAGE)
    assert calls == [("cam", 50.0, 1.0)]


def test_take_is_safe_from_several_threads_while_the_rate_changes():
    sampler = FrameSampler(SamplerConfig(sample_fps=5.0))
    indices = {"a": [], "b": []}

    def camera(name):
        for i in range(3000):
            index = sampler.take(name, i / 100.0)
            if index is not None:
                indices[name].append(index)

    threads = [threading.Thread(target=camera, args=(n,)) for n in indices]
    for thread in threads:
        thread.start()
    for k in range(200):
        sampler.set_sample_fps(5.0 if k % 2 else 10.0)
        sampler.stats("a")
    for thread in threads:
        thread.join()
    for name, got in indices.items():
        stats = sampler.stats(name)
        assert got == list(range(len(got))) and stats.sampled == len(got)
        assert stats.offered == 3000 == stats.sampled + stats.dropped
        assert 150 <= len(got) <= 300
