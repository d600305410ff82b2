"""reaction_node: camera frames -> memory (encoded on arrival); triggers -> streamed answers."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from std_msgs.msg import String

from dispider_ros.core.memory import MemoryConfig
from dispider_ros.core.reaction import ReactionConfig, ReactionEngine
from dispider_ros.core.sampler import FrameSampler, RejectedFrame, SamplerConfig
from dispider_ros.core.types import ResponseEvent
from dispider_ros.models.vlm import ReactionVLMConfig
from dispider_ros.msg import Response, Trigger
from dispider_ros.nodes.base import RELIABLE, RELIABLE_INPUT, DispiderNode, run
from dispider_ros.nodes.camera_input import CameraFrame, CameraInput
from dispider_ros.nodes.convert import response_to_msg, trigger_from_msg
from dispider_ros.nodes.params import Param, common_params

GENERATION = ("max_new_tokens", "temperature")
PARAMS = common_params("vlm_model", "video-LLM answering triggers (Qwen2-VL / Qwen2.5-VL "
                       "family)") + [
    Param("image_topics", ["image"], "sensor_msgs/Image topics whose frames go to memory",
          static=True),
    Param("compressed_topics", [], "sensor_msgs/CompressedImage topics for memory", static=True),
    Param("max_image_pixels", 4096 * 4096, "larger frames are refused as malformed",
          1, 1 << 28, static=True),
    Param("max_queue", 8, "triggers waiting at most; overflow drops the oldest", 1, 1000,
          static=True),
    Param("prompt_cameras", "all", "frames in the prompt: all cameras, or only the "
          "trigger's camera ('trigger')", static=True),
    Param("sample_fps", 2.0, "frames per second of camera time put into memory", 0.05, 120.0),
    Param("max_tokens", 4096, "memory budget in prompt tokens (visual tokens, each frame's "
          "label and markers, dialogue); round-decayed compression keeps the buffer under it",
          64, 10_000_000),
    Param("protected_frames", 4, "newest frames per camera never compressed", 0, 10000,
          static=True),
    Param("max_new_tokens", 48, "answer length limit in tokens", 1, 8192),
    Param("temperature", 0.0, "sampling temperature; 0 = greedy", 0.0, 5.0),
    Param("preempt_same_query", True, "a newer trigger for a query stops its stale answer "
          "(the new answer names the one it revises)", static=True),
]


class ReactionNode(DispiderNode):
    """Keeps the memory fed from its own camera subscription; answers on a worker thread."""

    PARAMS = PARAMS
    MODEL_PARAM = "vlm_model"

    def __init__(self, **kwargs):
        super().__init__("reaction_node", **kwargs)
        self.engine: Optional[ReactionEngine] = None
        self.sampler: Optional[FrameSampler] = None
        self.cameras: Optional[CameraInput] = None
        self.trigger_sub = None
        self.final_pub = self.stream_pub = self.text_pub = None
        self.memory_clears = 0  # camera-time jumps back that emptied the memory

    def configure_core(self, settings: Dict[str, Any]) -> None:
        vlm = ReactionVLMConfig(
            model=self.resolved["model"], device=self.resolved["device"],
            dtype=self.resolved["dtype"], local_files_only=settings["local_files_only"],
            trust_remote_code=settings["trust_remote_code"],
            max_new_tokens=settings["max_new_tokens"], temperature=settings["temperature"])
        config = ReactionConfig(
            memory=MemoryConfig(max_tokens=settings["max_tokens"],
                                protected_frames=settings["protected_frames"]),
            vlm=vlm, max_queue=settings["max_queue"],
            preempt_same_query=settings["preempt_same_query"],
            prompt_cameras=settings["prompt_cameras"],
            evidence_tolerance_sec=1.0 / settings["sample_fps"])
        self.sampler = FrameSampler(SamplerConfig(sample_fps=settings["sample_fps"]),
                                    on_reset=self._on_clock_jump)
        self.final_pub = self.create_lifecycle_publisher(Response, "response", RELIABLE)
        self.stream_pub = self.create_lifecycle_publisher(Response, "response_stream", RELIABLE)
        self.text_pub = self.create_lifecycle_publisher(String, "response_text", RELIABLE)
        self.engine = ReactionEngine(config, self._on_response)

    def activate_io(self) -> None:
        self.cameras = CameraInput(self, self.settings["image_topics"],
                                   self.settings["compressed_topics"], self._on_frames,
                                   self.settings["max_image_pixels"])
        self.cameras.start()
        self.trigger_sub = self.create_subscription(Trigger, "trigger", self._on_trigger,
                                                    RELIABLE_INPUT, callback_group=self.control_group)

    def deactivate_io(self) -> None:
        if self.trigger_sub is not None:
            self.destroy_subscription(self.trigger_sub)
            self.trigger_sub = None
        if self.cameras is not None:
            self.cameras.stop()
            self.cameras = None

    def cleanup_core(self) -> None:
        self.deactivate_io()
        if self.engine is not None:
            self.engine.close()
            self.engine.vlm.close()
            self.engine = None
        for name in ("final_pub", "stream_pub", "text_pub"):
            publisher = getattr(self, name)
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
                setattr(self, name, None)
        self.sampler = None

    def check_live(self, updates: Dict[str, Any]) -> None:
        merged = {**self.settings, **updates}
        SamplerConfig(sample_fps=merged["sample_fps"])
        dataclasses.replace(self.engine.memory.config, max_tokens=merged["max_tokens"])
        dataclasses.replace(self.engine.vlm.config,
                            **{key: merged[key] for key in GENERATION})

    def apply_live(self, updates: Dict[str, Any]) -> None:
        if "sample_fps" in updates:
            self.sampler.set_sample_fps(updates["sample_fps"])
            self.engine.config.evidence_tolerance_sec = 1.0 / updates["sample_fps"]
        if "max_tokens" in updates:
            self.engine.memory.set_max_tokens(updates["max_tokens"])
        generation = {key: updates[key] for key in GENERATION if key in updates}
        if generation:  # read by the next generate() call
            self.engine.vlm.config = dataclasses.replace(self.engine.vlm.config, **generation)

    # -- data path -----------------------------------------------------------------------
    def _on_frames(self, batch: List[CameraFrame]) -> None:
        """Camera worker thread: sample, then encode visual tokens into memory now."""
        engine, sampler = self.engine, self.sampler
        if engine is None:
            return
        for camera_id, stamp, rgb, frame_id, _ in batch:
            try:
                frame = sampler.offer(camera_id, stamp, rgb, frame_id)
            except RejectedFrame as error:
                self.health.fault(f"frame_{error.reason}", str(error))
                continue
            if frame is not None:
                engine.ingest(frame)

    def _on_clock_jump(self, camera_id: str, last: float, stamp: float) -> None:
        self.get_logger().warning(
            f"{camera_id}: camera time jumped back {last:.3f} -> {stamp:.3f} s (bag loop or "
            "sim-time reset): memory cleared")
        self.engine.memory.clear()
        self.memory_clears += 1

    def _on_trigger(self, msg: Trigger) -> None:
        engine = self.engine
        if engine is None:
            return
        try:
            engine.submit(trigger_from_msg(msg))
        except (ValueError, TypeError, RuntimeError) as error:
            self.health.fault("trigger", f"trigger {msg.trigger_id!r}: {error}")

    def _on_response(self, event: ResponseEvent) -> None:
        """Worker thread: publish chunks on the stream, finals on response (+ text mirror)."""
        message = response_to_msg(event)
        if not event.final:
            self.stream_pub.publish(message)
            return
        self.final_pub.publish(message)
        if event.error:
            self.health.fault(_fault_kind(event), f"response {event.response_id}: {event.error}")
        mirror = f"[{event.query_id}] {event.text}" + (f" (error: {event.error})" if event.error else "")
        self.text_pub.publish(String(data=mirror))

    def status_values(self) -> Dict[str, Any]:
        values: Dict[str, Any] = {"model": self.resolved.get("model", ""),
                                  "memory_clears": self.memory_clears}
        engine, cameras = self.engine, self.cameras
        if cameras is not None:
            values.update(cameras.stats())
        if engine is not None:
            values.update(engine.stats())
        return values


def _fault_kind(event: ResponseEvent) -> str:
    """Diagnostics counter of an error final: a queue outcome is not a model fault."""
    if event.extras.get("stop_reason") != "not_started":
        return "generation"
    for prefix, kind in (("dropped", "trigger_dropped"), ("superseded", "trigger_superseded")):
        if event.error.startswith(prefix):
            return kind
    return "trigger_not_started"


def main(args=None):
    run(ReactionNode, args)


if __name__ == "__main__":
    main()
