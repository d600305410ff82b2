"""perception_node: camera frames -> sampled, encoded, clip-segmented FrameFeature messages."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from dispider_ros.core.perception import PerceptionConfig, PerceptionPipeline
from dispider_ros.core.sampler import RejectedFrame, SamplerConfig
from dispider_ros.core.segmenter import SegmenterConfig
from dispider_ros.models.vision import VisionEncoder, VisionEncoderConfig
from dispider_ros.msg import FrameFeature
from dispider_ros.nodes.base import RELIABLE, DispiderNode, run
from dispider_ros.nodes.camera_input import CameraFrame, CameraInput
from dispider_ros.nodes.convert import feature_to_msg
from dispider_ros.nodes.params import Param, common_params

PARAMS = common_params("vision_model", "SigLIP/CLIP vision encoder") + [
    Param("image_topics", ["image"], "sensor_msgs/Image topics to watch (camera id = "
          "resolved topic name)", static=True),
    Param("compressed_topics", [], "sensor_msgs/CompressedImage topics to watch", static=True),
    Param("max_image_pixels", 4096 * 4096, "larger frames are refused as malformed",
          1, 1 << 28, static=True),
    Param("batch_size", 8, "frames encoded per forward pass at most", 1, 256, static=True),
    Param("sample_fps", 2.0, "sampled frames per second of camera time, per camera", 0.05, 120.0),
    Param("clip_similarity_threshold", 0.85, "a new clip starts when a frame's cosine "
          "similarity to the running clip falls below this", -1.0, 1.0),
    Param("min_clip_frames", 2, "frames a clip holds at least before a new one may start",
          1, 100000),
    Param("max_clip_frames", 0, "force a new clip after this many frames; 0 = no limit",
          0, 1000000),
]


class PerceptionNode(DispiderNode):
    """Latest-frame sampling, batched encoding and clip segmentation off the executor."""

    PARAMS = PARAMS
    MODEL_PARAM = "vision_model"

    def __init__(self, **kwargs):
        super().__init__("perception_node", **kwargs)
        self.encoder: Optional[VisionEncoder] = None
        self.pipeline: Optional[PerceptionPipeline] = None
        self.cameras: Optional[CameraInput] = None
        self.publisher = None

    def configure_core(self, settings: Dict[str, Any]) -> None:
        self.encoder = VisionEncoder(VisionEncoderConfig(
            model=self.resolved["model"], device=self.resolved["device"],
            dtype=self.resolved["dtype"], batch_size=settings["batch_size"],
            local_files_only=settings["local_files_only"],
            trust_remote_code=settings["trust_remote_code"]))
        # One forward pass now, so the first camera frames do not pay for lazy init.
        self.encoder.encode_images([np.zeros((64, 64, 3), np.uint8)])
        self.pipeline = PerceptionPipeline(self.encoder, PerceptionConfig(
            sampler=SamplerConfig(sample_fps=settings["sample_fps"]),
            segmenter=self._segmenter_config(settings)))
        self.publisher = self.create_lifecycle_publisher(FrameFeature, "features", RELIABLE)

    def activate_io(self) -> None:
        self.cameras = CameraInput(self, self.settings["image_topics"],
                                   self.settings["compressed_topics"], self._on_frames,
                                   self.settings["max_image_pixels"])
        self.cameras.start()

    def deactivate_io(self) -> None:
        if self.cameras is not None:
            self.cameras.stop()
            self.cameras = None

    def cleanup_core(self) -> None:
        self.deactivate_io()
        if self.publisher is not None:
            self.destroy_lifecycle_publisher(self.publisher)
            self.publisher = None
        self.pipeline = None
        if self.encoder is not None:
            self.encoder.close()
            self.encoder = None

    @staticmethod
    def _segmenter_config(settings: Dict[str, Any]) -> SegmenterConfig:
        return SegmenterConfig(similarity_threshold=settings["clip_similarity_threshold"],
                               min_clip_frames=settings["min_clip_frames"],
                               max_clip_frames=settings["max_clip_frames"])

    def check_live(self, updates: Dict[str, Any]) -> None:
        merged = {**self.settings, **updates}
        SamplerConfig(sample_fps=merged["sample_fps"])
        self._segmenter_config(merged)

    def apply_live(self, updates: Dict[str, Any]) -> None:
        if "sample_fps" in updates:
            self.pipeline.set_sample_fps(updates["sample_fps"])
        if updates.keys() & {"clip_similarity_threshold", "min_clip_frames", "max_clip_frames"}:
            self.pipeline.set_segmenter(self._segmenter_config(self.settings))

    def _on_frames(self, batch: List[CameraFrame]) -> None:
        """Worker thread: sample, encode the due frames in one batch, publish features."""
        with self.lock:
            if self.pipeline is None:
                return
            due = []
            for camera_id, stamp, rgb, frame_id, _ in batch:
                try:
                    frame = self.pipeline.offer(camera_id, stamp, rgb, frame_id)
                except RejectedFrame as error:
                    self.health.fault(f"frame_{error.reason}", str(error))
                    continue
                if frame is not None:
                    due.append(frame)
            features = self.pipeline.process(due)
        for feature in features:
            self.publisher.publish(feature_to_msg(feature, self.resolved["model"]))

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
