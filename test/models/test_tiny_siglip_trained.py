"""tiny:siglip_trained knows its closed world: held-out camera views are classified zero-shot
from the questions' text, its calibration separates named from other scenes, and the build
is deterministic (same cache key -> same weights)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_builds import assert_rebuild_matches_cache

from dispider_ros import world
from dispider_ros.core.policies import sigmoid
from dispider_ros.core.query_text import event_text
from dispider_ros.models import tiny, tiny_siglip_trained

SPEC = "tiny:siglip_trained"


@pytest.fixture(scope="module")
def encoder():
    from dispider_ros.models.vision import VisionEncoder, VisionEncoderConfig

    torch.set_num_threads(1)
    built = VisionEncoder(VisionEncoderConfig(model=SPEC))
    yield built
    built.close()


def test_held_out_views_are_classified_zero_shot_from_the_question(encoder):
    rng = np.random.default_rng(2024)  # neither the training (1234) nor calibration (1235) seed
    scenes = list(world.PHOTO_SCENES)
    views, labels = [], []
    for label, s in enumerate(scenes):
        for _ in range(12):
            views.append(world.camera_view(world.load_photo(s.name), rng, size=(320, 240)))
            labels.append(label)
    texts = [event_text(world.match_question(s)) for s in scenes]  # what the decision embeds
    cos = encoder.encode_images(views) @ encoder.encode_texts(texts).T  # (N, scenes)
    labels = np.array(labels)
    accuracy = float((cos.argmax(1) == labels).mean())
    scale, bias = encoder.match_calibration()
    prob = np.vectorize(sigmoid)(scale * cos + bias)
    named = labels[:, None] == np.arange(len(scenes))[None]
    print(f"\nheld-out zero-shot accuracy {accuracy:.3f} over {len(views)} views; calibration "
          f"({scale:.1f}, {bias:.2f}): P(match) median {np.median(prob[named]):.3f} named, "
          f"{np.median(prob[~named]):.4f} other")
    assert accuracy >= 0.9
    assert np.median(prob[named]) > 0.9 and np.median(prob[~named]) < 0.05


def test_the_build_record_and_size():
    folder = Path(tiny.resolve_model_path(SPEC))
    record = json.loads((folder / "training.json").read_text())
    assert [tuple(s) for s in record["scenes"][:len(world.PHOTO_SCENES)]] == \
        [(s.name, s.caption, s.word) for s in world.PHOTO_SCENES]
    assert record["templates"] == list(world.MATCH_TEMPLATES)
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 5e6, size


def test_the_cache_key_names_its_data():
    key = json.loads(tiny_siglip_trained.cache_key())
    assert [tuple(s) for s in key["photos"]] == [(s.name, s.caption, s.word) for s in world.PHOTO_SCENES]
    shared = world.shared_data_dir()
    found = {s.name for s in world.VIDEO_SCENES
             if shared is not None and (shared / "videos" / f"{s.name}.mp4").is_file()}
    assert set(key["clips"]) == found


@pytest.mark.slow
def test_the_build_is_deterministic(tmp_path):
    cached = assert_rebuild_matches_cache(SPEC, tiny_siglip_trained.build, tmp_path)
    assert (cached / "tokenizer.json").read_text() == (tmp_path / "tokenizer.json").read_text()
