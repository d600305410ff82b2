"""ClipSegmenter on synthetic embeddings, and PerceptionPipeline on real footage.

The real-footage check compares the segmenter's clip boundaries (tiny random-weight
SigLIP embeddings at 2 fps) against transitions found independently from raw pixels:
the total-variation distance between 8x8x8 RGB histograms of consecutive frames at the
video's full frame rate. Inside a shot that distance stays under 0.1 (p95 0.09 on Big
Buck Bunny); a cut or the fade-in from black moves >= 30 % of the pixel mass at once.
"""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dispider_ros.core.perception import PerceptionConfig, PerceptionPipeline
from dispider_ros.core.sampler import SamplerConfig
from dispider_ros.core.segmenter import ClipSegmenter, SegmenterConfig

VIDEOS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "videos"
CUT_DISTANCE = 0.3


def unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def scene(direction, count, rng, noise=0.05):
    return [unit(direction + noise * rng.standard_normal(direction.shape)) for _ in range(count)]


def test_boundary_at_scene_change_only():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(32), rng.standard_normal(32)
    seg = ClipSegmenter(SegmenterConfig(similarity_threshold=0.8, min_clip_frames=2))
    infos = [seg.update(e, t) for t, e in enumerate(scene(a, 6, rng) + scene(b, 5, rng))]
    assert [i.boundary for i in infos] == [False] * 6 + [True] + [False] * 4
    assert [i.clip_index for i in infos] == [0] * 6 + [1] * 5
    assert infos[6].clip_start == 6 and infos[-1].clip_start == 6 and infos[-1].clip_frames == 5
    assert infos[0].similarity == 1.0 and infos[6].similarity < 0.8 < infos[5].similarity


def test_min_clip_frames_keeps_a_single_odd_frame_in_its_clip():
    rng = np.random.default_rng(1)
    a, b, c = (rng.standard_normal(16) for _ in range(3))
    seg = ClipSegmenter(SegmenterConfig(similarity_threshold=0.8, min_clip_frames=3))
    embeddings = scene(a, 3, rng) + scene(b, 1, rng) + scene(c, 3, rng)
    infos = [seg.update(e, t) for t, e in enumerate(embeddings)]
    # b starts clip 1; c arrives while clip 1 has 1 frame < 3, so it cannot close it yet
    assert [i.boundary for i in infos][:5] == [False, False, False, True, False]


def pan(steps, step_deg, dim=8):
    """Unit vectors rotating step_deg per frame in one plane (a slow camera pan)."""
    angles = np.radians(step_deg) * np.arange(steps)
    out = np.zeros((steps, dim), np.float32)
    out[:, 0], out[:, 1] = np.cos(angles), np.sin(angles)
    return list(out)


def test_a_pan_is_not_a_cut_but_a_long_drift_ends_the_clip():
    # 5 degrees per frame: consecutive cos 0.996, but the clip mean falls behind the view
    frames = pan(40, 5.0)
    no_drift = ClipSegmenter(SegmenterConfig(similarity_threshold=0.85, drift_threshold=-1.0))
    assert not any(no_drift.update(e, t).boundary for t, e in enumerate(frames))
    drift = ClipSegmenter(SegmenterConfig(similarity_threshold=0.85, drift_threshold=0.5))
    infos = [drift.update(e, t) for t, e in enumerate(frames)]
    first = next(i for i in infos if i.boundary)
    assert first.similarity < 0.5 and first.previous_similarity > 0.99
    # A cut in the middle of the pan is abrupt: both similarities drop at once.
    cut = ClipSegmenter(SegmenterConfig(similarity_threshold=0.85, drift_threshold=-1.0))
    jump = pan(6, 5.0) + [unit(np.eye(8)[3] + 0.01)] + pan(3, 5.0)
    assert [cut.update(e, t).boundary for t, e in enumerate(jump)].index(True) == 6


def test_max_clip_frames_and_reset():
    rng = np.random.default_rng(2)
    a = rng.standard_normal(8)
    seg = ClipSegmenter(SegmenterConfig(similarity_threshold=0.5, min_clip_frames=1, max_clip_frames=3))
    infos = [seg.update(e, t) for t, e in enumerate(scene(a, 7, rng))]
    assert [i.clip_index for i in infos] == [0, 0, 0, 1, 1, 1, 2]
    seg.reset()
    after = seg.update(unit(a), 100.0)
    assert after.boundary and after.clip_index == 3 and after.clip_start == 100.0


def test_embedding_errors_and_config_errors_name_the_value():
    seg = ClipSegmenter()
    with pytest.raises(ValueError, match="norm 0.0"):
        seg.update(np.zeros(4), 0.0)
    seg.update(np.ones(4), 0.0)
    with pytest.raises(ValueError, match="dim 5"):
        seg.update(np.ones(5), 1.0)
    with pytest.raises(ValueError, match="similarity_threshold 1.5"):
        SegmenterConfig(similarity_threshold=1.5)
    with pytest.raises(ValueError, match="min_clip_frames 0"):
        SegmenterConfig(min_clip_frames=0)
    with pytest.raises(ValueError, match="drift_threshold 2"):
        SegmenterConfig(drift_threshold=2)
    with pytest.raises(ValueError, match="max_clip_frames 1"):
        SegmenterConfig(min_clip_frames=2, max_clip_frames=1)


# --- real footage ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder():
    from dispider_ros.models.vision import VisionEncoder, VisionEncoderConfig

    torch.set_num_threads(1)
    enc = VisionEncoder(VisionEncoderConfig(model="tiny:siglip", batch_size=8))
    yield enc
    enc.close()


def run_video(name, encoder, sample_fps):
    """Return (features, pixel_transitions) for a video in the shared data folder."""
    path = VIDEOS / name
    if not path.is_file():
        pytest.skip(f"{path} is absent on this machine")
    pipeline = PerceptionPipeline(encoder, PerceptionConfig(sampler=SamplerConfig(sample_fps)))
    capture = cv2.VideoCapture(str(path))
    frames, hist_prev, transitions = [], None, []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        stamp = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        small = cv2.resize(bgr, (160, 90), interpolation=cv2.INTER_AREA)
        hist = cv2.calcHist([small], [0, 1, 2], None, [8, 8, 8], [0, 256] * 3).ravel()
        hist /= hist.sum()
        if hist_prev is not None and 0.5 * np.abs(hist - hist_prev).sum() > CUT_DISTANCE:
            transitions.append(stamp)
        hist_prev = hist
        frame = pipeline.offer("cam", stamp, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if frame is not None:
            frames.append(frame)
    capture.release()
    features = []
    for start in range(0, len(frames), 8):
        features += pipeline.process(frames[start:start + 8])
    return features, transitions, pipeline


def regions(stamps, gap=1.0):
    """Group transition frames closer than gap seconds into [first, last] regions."""
    out = []
    for t in stamps:
        if out and t - out[-1][1] < gap:
            out[-1][1] = t
        else:
            out.append([t, t])
    return out


def test_boundaries_at_the_cuts_of_big_buck_bunny(encoder):
    sample_fps = 2.0
    features, transitions, pipeline = run_video("moviepy_big_buck_bunny_0_30.webm", encoder, sample_fps)
    reference = regions(transitions)
    boundaries = [f.stamp for f in features if f.clip_boundary]
    # The pixel detector finds the fade-in from black and the three hard cuts.
    assert len(reference) >= 3, reference
    slack = 1.0 / sample_fps + 1e-3  # the first sampled frame after a cut is <= 1 period late
    for start, end in reference:
        assert any(start - 1e-3 <= b <= end + slack for b in boundaries), (start, end, boundaries)
    for b in boundaries:
        assert any(start - 1e-3 <= b <= end + slack for start, end in reference), (b, reference)
    clips = [f.clip_index for f in features]
    assert clips == sorted(clips) and clips[-1] == len(boundaries)
    stats = pipeline.stats()
    assert stats["frames_processed"] == len(features) == stats["cam/sampled"] == 60
    assert stats["encode_ms_per_frame"] > 0


@pytest.mark.parametrize("name", ["mdn_stream-of-water.mp4", "mdn_cc0_flower.mp4"])
def test_no_boundary_in_a_single_shot(encoder, name):
    features, transitions, _ = run_video(name, encoder, sample_fps=10.0)
    assert transitions == []  # the pixel reference agrees: one shot
    assert len(features) >= 25
    assert not any(f.clip_boundary for f in features)
    assert {f.clip_index for f in features} == {0}


def test_pipeline_clock_jump_resets_the_camera_clip(encoder):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    pipeline = PerceptionPipeline(encoder, PerceptionConfig(sampler=SamplerConfig(2.0)))
    first = pipeline.process([pipeline.offer("cam", t, images[0]) for t in (10.0, 10.5)])
    looped = pipeline.process([pipeline.offer("cam", 0.0, images[0])])  # bag loop
    assert [f.clip_index for f in first] == [0, 0]
    assert looped[0].clip_boundary and looped[0].clip_index == 1 and looped[0].frame_index == 2
    assert pipeline.stats()["cam/resets"] == 1
