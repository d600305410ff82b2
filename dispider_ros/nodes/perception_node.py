"""perception_node: camera frames -> sampled (before decoding), encoded, clip-segmented
FrameFeature messages on `features`, and the exact sampled frames on `sampled_image`."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from dispider_ros import compose
from dispider_ros.core.perception import PerceptionPipeline
from dispider_ros.core.sampler import RejectedFrame
from dispider_ros.msg import FrameFeature, SampledImage
from dispider_ros.nodes.base import RELIABLE, DispiderNode, run
from dispider_ros.nodes.camera_input import CameraFrame, CameraInput
from dispider_ros.nodes.convert import feature_to_msg
from dispider_ros.nodes.sampled_image import frame_to_msg

SEGMENTER = ("clip_similarity_threshold", "min_clip_frames", "max_clip_frames")


class PerceptionNode(DispiderNode):
    """Stamp-first sampling, batched encoding and clip segmentation off the executor."""

    NODE = "perception_node"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.encoder = None
        self.pipeline: Optional[PerceptionPipeline] = None
        self.cameras: Optional[CameraInput] = None
        self.feature_pub = self.frame_pub = None

    def configure_core(self, settings: Dict[str, Any]) -> None:
        self.encoder = compose.load_vision_encoder(settings, self.NODE)
        # One forward pass now, so the first camera frames do not pay for lazy init.
        self.encoder.encode_images([np.zeros((64, 64, 3), np.uint8)])
        self.pipeline = compose.perception_stage(settings, self.encoder)
        # The frame goes out before its feature, so it usually reaches the reaction first.
        self.frame_pub = self.create_lifecycle_publisher(SampledImage, "sampled_image", RELIABLE)
        self.feature_pub = self.create_lifecycle_publisher(FrameFeature, "features", RELIABLE)

    def activate_io(self) -> None:
        self.cameras = CameraInput(self, self.settings["image_topics"],
                                   self.settings["compressed_topics"], self.pipeline.sampler,
                                   self._on_frames, self.settings["max_image_pixels"],
                                   self.settings["camera_reliability"])
        self.cameras.start()

    def deactivate_io(self) -> None:
        if self.cameras is not None:
            self.cameras.stop()
            self.cameras = None

    def cleanup_core(self) -> None:
        self.deactivate_io()
        for name in ("feature_pub", "frame_pub"):
            publisher = getattr(self, name)
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
                setattr(self, name, None)
        self.pipeline = None
        if self.encoder is not None:
            self.encoder.close()
            self.encoder = None

    def check_live(self, updates: Dict[str, Any]) -> None:
        merged = {**self.settings, **updates}
        compose.sampler_config(merged)
        compose.segmenter_config(merged)

    def apply_live(self, updates: Dict[str, Any]) -> None:
        if "sample_fps" in updates:  # the sampler locks itself (camera callbacks use it)
            self.pipeline.set_sample_fps(updates["sample_fps"])
        if updates.keys() & set(SEGMENTER):
            self.pipeline.set_segmenter(compose.segmenter_config(self.settings))

    def _on_frames(self, batch: List[CameraFrame]) -> None:
        """Worker thread: encode the sampled frames in one batch; publish frames, features."""
        with self.lock:
            if self.pipeline is None:
                return
            frames = []
            for camera_id, stamp, index, rgb, frame_id, _ in batch:
                try:
                    frames.append(self.pipeline.frame(camera_id, stamp, index, rgb, frame_id))
                except RejectedFrame as error:
                    self.health.fault(f"frame_{error.reason}", str(error))
            features = self.pipeline.process(frames)
            image_format, quality = self.settings["sampled_image_format"], self.settings["jpeg_quality"]
        clips = {(f.camera_id, f.frame_index): f.clip_index for f in features}
        for frame in frames:
            self.frame_pub.publish(frame_to_msg(frame, image_format, quality,
                                                clips.get((frame.camera_id, frame.index), -1)))
        for feature in features:
            self.feature_pub.publish(feature_to_msg(feature, self.resolved["model"]))

    def status_values(self) -> Dict[str, Any]:
        values: Dict[str, Any] = {"model": self.resolved.get("model", ""),
                                  "sample_fps_target": self.settings.get("sample_fps", 0.0)}
        pipeline, cameras = self.pipeline, self.cameras
        if cameras is not None:
            values.update(cameras.stats())
        if pipeline is not None:
            values.update(pipeline.stats())
        return values


def main(args=None):
    run(PerceptionNode, args)


if __name__ == "__main__":
    main()
