"""P5: image message -> model tensor, and the perception pipeline's cost over the encoder's forward.

Conversion: 640x480 frames of real footage as
- duck-typed rgb8 / bgr8 messages (bytes data, the fields dispider_ros.imaging reads),
- real sensor_msgs.msg.Image rgb8 (its data field is an array.array, as rclpy delivers it),
  when the ROS message wheels are importable,
- a CompressedImage (JPEG, quality 90),
each through `message_to_rgb8` and the perception encoder's preprocessing into its input
tensor (VisionEncoder._pixels: OpenCV resize + normalise -> (1, 3, 224, 224) float32).
The reaction model's own tensor (Qwen2-VL image processor -> pixel_values) is reported too.

Pipeline overhead: per sampled frame, what the perception node does with a message
(its stage from compose.perception_stage of the shipped settings): sample on the stamp
(take), convert, build the Frame, process -> FrameFeature (preprocessing, forward,
normalisation, clip segmentation); stamps 1 s apart, so every frame is due at the shipped
sample_fps,
versus the encoder's own forward (`get_image_features` on a ready tensor), measured
interleaved in one loop so drift in machine load hits both alike. One torch thread.
"""
from __future__ import annotations

import time
from typing import Dict, List

import numpy as np
import torch

from bench import models
from bench.common import CompressedMsg, ImageMsg, median, percentile, timed
from dispider_ros import compose
from dispider_ros.imaging import message_to_rgb8


def _ros_image(rgb: np.ndarray):
    try:
        from sensor_msgs.msg import Image
    except ImportError:
        return None
    msg = Image()
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding, msg.is_bigendian, msg.step = "rgb8", 0, rgb.shape[1] * 3
    msg.data = rgb.tobytes()
    msg.header.frame_id = "camera"
    return msg


def _ms(fn, repeats: int, warmup: int = 5) -> List[float]:
    return [1e3 * seconds for seconds in timed(fn, repeats, warmup)]


def conversion(encoder, vlm, frames: List[np.ndarray], repeats: int) -> Dict[str, dict]:
    """ms per 640x480 message: to RGB, RGB to the encoder tensor, and both together."""
    rgb = frames[0]
    messages = {"rgb8": ImageMsg(rgb, "rgb8"), "bgr8": ImageMsg(rgb, "bgr8"),
                "jpeg": CompressedMsg(rgb)}
    ros = _ros_image(rgb)
    if ros is not None:
        messages["rgb8 sensor_msgs.msg.Image"] = ros
    out = {}
    for name, msg in messages.items():
        to_rgb = _ms(lambda: message_to_rgb8(msg), repeats)
        array = message_to_rgb8(msg)
        assert array.shape == (480, 640, 3) and (name == "jpeg" or np.array_equal(array, rgb))
        to_tensor = _ms(lambda: encoder._pixels([message_to_rgb8(msg)]), repeats)
        out[name] = {"to_rgb_ms_p50": round(median(to_rgb), 3),
                     "to_model_tensor_ms_p50": round(median(to_tensor), 3),
                     "to_model_tensor_ms_p95": round(percentile(to_tensor, 95), 3)}
    qwen = _ms(lambda: vlm.processor.image_processor(images=[message_to_rgb8(messages["rgb8"])],
                                                     return_tensors="pt", **vlm._pixel_kwargs), repeats)
    out["rgb8 -> reaction model pixel_values (Qwen2-VL image processor)"] = {
        "to_model_tensor_ms_p50": round(median(qwen), 3)}
    return out


def pipeline_overhead(encoder, frames: List[np.ndarray], repeats: int) -> dict:
    """Per-frame PerceptionPipeline time (from the message) over the encoder's forward alone."""
    model = encoder.model
    pipeline = compose.perception_stage(models.node_settings("perception_node"), encoder)
    assert pipeline.sampler.period < 1.0  # every frame below is due
    messages = [ImageMsg(f, "rgb8") for f in frames]
    pixels = [encoder._pixels([f]) for f in frames]

    def forward(i: int) -> None:
        with torch.inference_mode():
            feats = model.get_image_features(pixel_values=pixels[i % len(pixels)])
            torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()

    stamp = [0.0]

    def whole(i: int) -> None:
        msg = messages[i % len(messages)]
        stamp[0] += 1.0
        index = pipeline.take("cam", stamp[0])
        frame = pipeline.frame("cam", stamp[0], index, message_to_rgb8(msg))
        pipeline.process([frame])

    for i in range(3):
        forward(i)
        whole(i)
    fwd, total = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        forward(i)
        t1 = time.perf_counter()
        whole(i)
        t2 = time.perf_counter()
        fwd.append((t1 - t0) * 1e3)
        total.append((t2 - t1) * 1e3)
    stats = pipeline.stats()
    f, t = median(fwd), median(total)
    return {"forward_ms_p50": round(f, 2), "pipeline_ms_p50": round(t, 2),
            "overhead": round(t / f - 1.0, 4),
            "preprocess_ms_per_frame": round(stats.get("last_preprocess_ms_per_frame", float("nan")), 3),
            "segment_ms_per_frame": round(stats["segment_ms_per_frame"], 3), "repeats": repeats}


def reaction_encode_overhead(vlm, frames: List[np.ndarray], repeats: int) -> dict:
    """Reaction side, for information: encode_frame (processor + vision) over the vision forward."""
    inputs = [vlm.processor.image_processor(images=[f], return_tensors="pt", **vlm._pixel_kwargs)
              for f in frames]
    fwd, total = [], []
    for i in range(repeats + 2):
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        vlm._vision_forward(x["pixel_values"], x["image_grid_thw"])
        t1 = time.perf_counter()
        vlm.encode_frame(frames[i % len(frames)])
        t2 = time.perf_counter()
        if i >= 2:
            fwd.append((t1 - t0) * 1e3)
            total.append((t2 - t1) * 1e3)
    f, t = median(fwd), median(total)
    return {"vision_forward_ms_p50": round(f, 2), "encode_frame_ms_p50": round(t, 2),
            "overhead": round(t / f - 1.0, 4)}


def run(encoder, vlm, frames: List[np.ndarray], quick: bool, log=print) -> dict:
    repeats = 20 if quick else 300
    conv = conversion(encoder, vlm, frames, repeats)
    over = pipeline_overhead(encoder, frames, 12 if quick else 100)
    react = reaction_encode_overhead(vlm, frames, 8 if quick else 50)
    for name, row in conv.items():
        log(f"  P5 {name}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
    log(f"  P5 pipeline {over['pipeline_ms_p50']} ms vs forward {over['forward_ms_p50']} ms "
        f"(+{100 * over['overhead']:.1f} %); reaction encode_frame +{100 * react['overhead']:.0f} % over its vision forward")
    return {"protocol": {"frame": "640x480 real footage", "threads": 1, "statistic": "median",
                         "pipeline": "compose.perception_stage(shipped perception_node settings): "
                                     "take on the stamp, convert, frame, process",
                         "encoder_tensor": "(1, 3, 224, 224) float32, OpenCV fast preprocess"},
            "conversion": conv, "pipeline": over, "reaction_encode": react}
