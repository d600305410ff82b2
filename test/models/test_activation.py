"""Activation head: StreamBridge labelling, training, bit-identical reload, the CLI."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dispider_ros.models.activation import (ActivationConfig, ActivationHead, fit,
                                            label_frames)

VIDEOS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "videos"
torch.set_num_threads(1)


@pytest.mark.parametrize("stamps, windows, p, expected", [
    # one segment of 4 frames, P = 25 %: only its last frame
    ([0, 1, 2, 3, 4, 5], [(1, 4)], 0.25, [0, 0, 0, 0, 1, 0]),
    # P = 50 % of 4 -> 2; of 3 -> ceil(1.5) = 2
    ([0, 1, 2, 3, 4, 5, 6, 7], [(0, 3), (5, 7)], 0.5, [0, 0, 1, 1, 0, 0, 1, 1]),
    # a tiny P still marks one frame per non-empty segment; empty windows add nothing
    ([0, 1, 2, 3], [(0, 3), (10, 20)], 0.01, [0, 0, 0, 1]),
    # P = 1: every frame of the segment
    ([0, 1, 2, 3], [(1, 2)], 1.0, [0, 1, 1, 0]),
    # stamps out of order: "last" means latest in time
    ([3, 0, 2, 1], [(0, 3)], 0.5, [1, 0, 1, 0]),
    # no windows: all negative
    ([0, 1], [], 0.3, [0, 0]),
])
def test_label_frames_streambridge_rule(stamps, windows, p, expected):
    labels = label_frames(stamps, windows, p)
    assert labels.dtype == np.float32 and labels.tolist() == expected


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5])
def test_label_frames_rejects_bad_fraction(p):
    with pytest.raises(ValueError, match=f"positive_fraction {p}"):
        label_frames([0, 1], [(0, 1)], p)
    with pytest.raises(ValueError, match=r"window \(2, 1\)"):
        label_frames([0, 1], [(2, 1)], 0.5)


def synthetic(n=400, dim=16, seed=0):
    """Positive when the frame is close to the query: learnable from [q, f, q*f]."""
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((n, dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    noise = rng.standard_normal((n, dim)).astype(np.float32)
    labels = (rng.random(n) < 0.3).astype(np.float32)
    frame = np.where(labels[:, None] > 0, text + 0.3 * noise, noise)
    frame /= np.linalg.norm(frame, axis=1, keepdims=True)
    return text, frame.astype(np.float32), labels


def test_head_trains_and_reloads_bit_identically(tmp_path):
    torch.manual_seed(0)
    text, frame, labels = synthetic()
    head = ActivationHead(ActivationConfig(dim=16, hidden=32))
    assert head(torch.from_numpy(text[:5]), torch.from_numpy(frame[:5])).shape == (5,)
    losses = fit(head, text, frame, labels, epochs=40, lr=3e-3, batch_size=64)
    assert losses[-1] < 0.3 * losses[0]
    scores = head.score(text, frame)
    assert ((scores > 0.5) == (labels > 0)).mean() > 0.95
    head.save_pretrained(tmp_path / "head")
    again = ActivationHead.from_pretrained(tmp_path / "head")
    original, loaded = head.state_dict(), again.state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[k], loaded[k]) for k in original)
    assert np.array_equal(again.score(text, frame), scores)
    saved = json.loads((tmp_path / "head" / "config.json").read_text())
    assert saved == {"model_type": "dispider_activation_head", "dim": 16, "hidden": 32}


def test_head_errors(tmp_path):
    with pytest.raises(ValueError, match="dim 0"):
        ActivationConfig(dim=0)
    with pytest.raises(FileNotFoundError, match="needs config.json"):
        ActivationHead.from_pretrained(tmp_path)
    head = ActivationHead(ActivationConfig(dim=8, hidden=4))
    head.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert", "dim": 8}')
    with pytest.raises(ValueError, match="not a dispider_activation_head config"):
        ActivationHead.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="dims 4/8"):
        head.score(np.zeros((1, 4)), np.zeros((1, 8)))


def test_training_cli_on_real_footage(tmp_path, capsys):
    from dispider_ros.core.decision import DecisionConfig, DecisionCore
    from dispider_ros.core.types import FrameFeature, QuerySpec
    from dispider_ros.models import train_activation

    video = VIDEOS / "moviepy_big_buck_bunny_0_30.webm"
    if not video.is_file():
        pytest.skip(f"{video} is absent on this machine")
    annotations = {"videos": [{"video": video.name, "queries": [
        {"text": "Tell me when the bird is on the branch", "answer_windows": [[15.7, 22.9]]},
        {"text": "Tell me when the title appears", "answer_windows": [[23.0, 29.9]]},
    ]}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(annotations))
    out = tmp_path / "head"
    code = train_activation.main([str(path), "--out", str(out), "--video-root", str(VIDEOS),
                                  "--epochs", "60", "--positive-fraction", "0.5", "--lr", "3e-3"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "dataset: 120 pairs" in printed and "saved activation head" in printed
    record = json.loads((out / "training.json").read_text())
    assert record["positives"] == 7 + 7  # ceil(0.5 * 14) per window: 14 frames each at 2 fps
    assert record["losses"][-1] < 0.5 * record["losses"][0]

    # The trained head plugs into the decision core as the activation policy.
    from dispider_ros.models.vision import VisionEncoder, VisionEncoderConfig

    head = ActivationHead.from_pretrained(out)
    encoder = VisionEncoder(VisionEncoderConfig(model="tiny:siglip"))
    stamps, frames = train_activation.sample_video(video, 2.0)
    embeddings = encoder.encode_images(frames)
    core = DecisionCore(DecisionConfig(id_prefix="a", cooldown_sec=30.0), text_encoder=encoder.encode_texts,
                        activation_head=head)
    core.add_query(QuerySpec("bird", "Tell me when the bird is on the branch", mode="activation"), 0.0)
    fired = []
    for i, (stamp, emb) in enumerate(zip(stamps, embeddings)):
        fired += core.on_feature(FrameFeature("cam", stamp, i, 0, False, 1.0, 0.0, emb))
    assert [t.policy for t in fired] == ["activation"]
    assert 15.7 <= fired[0].stamp <= 22.9
    encoder.close()
