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
