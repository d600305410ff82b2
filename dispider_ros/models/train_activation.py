"""Train the activation head from annotated videos (StreamBridge labelling rule).

Usage:
    python -m dispider_ros.models.train_activation ANNOTATIONS.json --out FOLDER \
        [--vision-model tiny:siglip] [--sample-fps 2] [--positive-fraction 0.25] ...

Annotation format (JSON; video paths relative to --video-root, default the JSON's folder):
    {
      "videos": [
        {
          "video": "videos/moviepy_big_buck_bunny_0_30.webm",
          "queries": [
            {"text": "tell me when the bird is on the branch",
             "answer_windows": [[15.7, 22.9]]}
          ]
        }
      ]
    }
Each answer window [start, end] (seconds of video time) is one answer segment: the video
between the moment the answer's evidence begins and the moment the answer is due. Frames
are sampled at --sample-fps on the video's own timestamps with the same FrameSampler the
perception node uses, encoded with the same VisionEncoder, and paired with every query of
their video: the last --positive-fraction of each segment's frames are positive, all
other frames negative (models.activation.label_frames). The query text is embedded with
the encoder's text tower after query_text.event_text, exactly as the decision core does.
P = 0.25 is this package's default; the StreamBridge paper does not state its value.
Writes the head (config.json + model.safetensors) and training.json (settings, losses).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np
import torch

from dispider_ros.core.query_text import event_text
from dispider_ros.core.sampler import FrameSampler, SamplerConfig
from dispider_ros.models.activation import ActivationConfig, ActivationHead, fit, label_frames
from dispider_ros.models.vision import VisionEncoder, VisionEncoderConfig

LOG = logging.getLogger(__name__)


def sample_video(path: Path, sample_fps: float, max_seconds: float = 0.0
                 ) -> Tuple[List[float], List[np.ndarray]]:
    """Decode path and return (stamps, RGB frames) sampled at sample_fps on video time."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FileNotFoundError(f"cannot open video {str(path)!r}")
    sampler = FrameSampler(SamplerConfig(sample_fps=sample_fps))
    stamps, frames = [], []
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            stamp = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if max_seconds and stamp > max_seconds:
                break
            frame = sampler.offer("video", stamp, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if frame is not None:
                stamps.append(frame.stamp)
                frames.append(frame.image)
    finally:
        capture.release()
    return stamps, frames


def load_annotations(path: Path) -> list:
    """Parse and check the annotation file; ValueError naming the bad entry."""
    data = json.loads(Path(path).read_text())
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, list) or not videos:
        raise ValueError(f"{path}: expected {{'videos': [...]}} with at least one video")
    for i, video in enumerate(videos):
        if not isinstance(video.get("video"), str) or not isinstance(video.get("queries"), list):
            raise ValueError(f"{path}: videos[{i}] needs 'video' (str) and 'queries' (list)")
        for j, query in enumerate(video["queries"]):
            windows = query.get("answer_windows")
            if not isinstance(query.get("text"), str) or not isinstance(windows, list) or \
                    not all(isinstance(w, (list, tuple)) and len(w) == 2 for w in windows):
                raise ValueError(f"{path}: videos[{i}].queries[{j}] needs 'text' and "
                                 "'answer_windows' as [[start, end], ...]")
    return videos


def build_dataset(videos: list, root: Path, encoder: VisionEncoder, sample_fps: float,
                  positive_fraction: float, max_seconds: float = 0.0):
    """(text (N, D), frame (N, D), labels (N,)) over every (query, sampled frame) pair."""
    texts, frames_out, labels = [], [], []
    for video in videos:
        stamps, images = sample_video(root / video["video"], sample_fps, max_seconds)
        if not images:
            raise ValueError(f"video {video['video']!r} gave no frames")
        frame_emb = encoder.encode_images(images)  # (F, D)
        query_emb = encoder.encode_texts([event_text(q["text"]) for q in video["queries"]])  # (Q, D)
        for query, q_emb in zip(video["queries"], query_emb):
            y = label_frames(stamps, [tuple(w) for w in query["answer_windows"]], positive_fraction)
            texts.append(np.repeat(q_emb[None], len(stamps), axis=0))
            frames_out.append(frame_emb)
            labels.append(y)
        LOG.info("%s: %d frames, %d queries", video["video"], len(stamps), len(video["queries"]))
    return np.concatenate(texts), np.concatenate(frames_out), np.concatenate(labels)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dispider_ros.models.train_activation",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("annotations", type=Path, help="annotation JSON (format in the module docstring)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the trained head")
    parser.add_argument("--video-root", type=Path, default=None,
                        help="folder video paths are relative to (default: the JSON's folder)")
    parser.add_argument("--vision-model", default="tiny:siglip", help="HF id, folder or tiny:siglip")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--sample-fps", type=float, default=2.0)
    parser.add_argument("--max-seconds", type=float, default=0.0, help="use only the first N s (0 = all)")
    parser.add_argument("--positive-fraction", type=float, default=0.25, help="StreamBridge P in (0, 1]")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    videos = load_annotations(args.annotations)
    root = args.video_root or args.annotations.resolve().parent
    encoder = VisionEncoder(VisionEncoderConfig(model=args.vision_model, device=args.device,
                                                dtype=args.dtype))
    try:
        started = time.perf_counter()
        text, frame, labels = build_dataset(videos, root, encoder, args.sample_fps,
                                            args.positive_fraction, args.max_seconds)
        encode_sec = time.perf_counter() - started
    finally:
        encoder.close()
    print(f"dataset: {len(labels)} pairs, {int(labels.sum())} positive, dim {text.shape[1]} "
          f"(encoded in {encode_sec:.1f} s)")
    head = ActivationHead(ActivationConfig(dim=int(text.shape[1]), hidden=args.hidden))
    losses = fit(head, text, frame, labels, epochs=args.epochs, lr=args.lr,
                 weight_decay=args.weight_decay, batch_size=args.batch_size, seed=args.seed)
    for epoch, loss in enumerate(losses):
        if epoch % max(1, len(losses) // 10) == 0 or epoch == len(losses) - 1:
            print(f"epoch {epoch + 1:4d}/{len(losses)}  loss {loss:.4f}")
    head.save_pretrained(args.out)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "training.json").write_text(json.dumps(
        {"settings": settings, "pairs": int(len(labels)), "positives": int(labels.sum()),
         "losses": losses}, indent=2) + "\n")
    print(f"saved activation head to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
