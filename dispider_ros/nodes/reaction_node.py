"""reaction_node: perception's sampled frames -> memory (encoded on arrival); triggers ->
streamed answers. It has no camera subscription of its own: it stores exactly the frames
perception sampled (`sampled_image`), so every trigger's evidence frame is one of them."""
from __future__ import annotations

import dataclasses
import math
import queue
import threading
from typing import Any, Dict, Optional

from rclpy.qos import QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from dispider_ros import compose
from dispider_ros.core.reaction import ReactionEngine, response_id
from dispider_ros.core.types import ErrorCode, ResponseEvent
from dispider_ros.imaging import ConversionConfig, ImageError
from dispider_ros.msg import Query, Response, SampledImage, Trigger
from dispider_ros.nodes.base import RELIABLE, RELIABLE_INPUT, DispiderNode, run
from dispider_ros.nodes.convert import response_to_msg, to_sec, trigger_from_msg
from dispider_ros.nodes.sampled_image import frame_from_msg
from dispider_ros.overlay import OverlayState, draw as draw_overlay

GENERATION = ("max_new_tokens", "min_new_tokens", "temperature")
# Sampled frames waiting to be encoded into memory; at 2 fps this is half a minute of
# backlog (a link that comes back after an outage), beyond which the oldest are dropped.
FRAME_BACKLOG = 64
# Overlay images for viewers: reliable (RViz's default subscription matches it, and so does
# a best-effort one), the latest frame only.
OVERLAY_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE)


class ReactionNode(DispiderNode):
    """Feeds the memory from `sampled_image` on a worker thread; answers on another."""

    NODE = "reaction_node"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.engine: Optional[ReactionEngine] = None
        self.vlm = None
        self.frame_sub = self.trigger_sub = self.cancel_sub = None
        self.final_pub = self.stream_pub = self.text_pub = None
        self.conversion = ConversionConfig()
        self._frames: "queue.Queue[Optional[SampledImage]]" = queue.Queue(maxsize=FRAME_BACKLOG)
        self._ingest_thread: Optional[threading.Thread] = None
        self.frames_backlog_dropped = 0
        # Gaps in each camera's frame_index: sampled frames that never arrived (a slow or
        # broken link drops the oldest ones from the writer's keep-last history).
        self._last_index: Dict[str, int] = {}
        self.frames_missed = 0
        self.overlay: Optional[OverlayState] = None  # overlay on: what it draws
        self.overlay_pub = None
        self.overlay_inputs: list = []
        self.overlays_published = 0

    def configure_core(self, settings: Dict[str, Any]) -> None:
        self.vlm = compose.load_reaction_vlm(settings)
        self.conversion = ConversionConfig(max_pixels=settings["max_image_pixels"])
        self.final_pub = self.create_lifecycle_publisher(Response, "response", RELIABLE)
        self.stream_pub = self.create_lifecycle_publisher(Response, "response_stream", RELIABLE)
        self.text_pub = self.create_lifecycle_publisher(String, "response_text", RELIABLE)
        self.engine = compose.reaction_stage(settings, self._on_response, self.vlm)
        if settings["overlay"]:
            self.overlay = OverlayState()
            self.overlay_pub = self.create_lifecycle_publisher(Image, "overlay", OVERLAY_QOS)

    def activate_io(self) -> None:
        self._last_index = {}
        self._ingest_thread = threading.Thread(target=self._ingest_loop, name="frame-ingest",
                                               daemon=True)
        self._ingest_thread.start()
        self.frame_sub = self.create_subscription(SampledImage, "sampled_image", self._on_frame,
                                                  RELIABLE, callback_group=self.input_group)
        self.trigger_sub = self.create_subscription(Trigger, "trigger", self._on_trigger,
                                                    RELIABLE_INPUT, callback_group=self.control_group)
        self.cancel_sub = self.create_subscription(Query, "query_cancel", self._on_cancel,
                                                   RELIABLE_INPUT, callback_group=self.control_group)
        if self.overlay is not None:  # the overlay lists questions before their first trigger
            self.overlay_inputs = [
                self.create_subscription(Query, "query", self._on_overlay_query, RELIABLE_INPUT,
                                         callback_group=self.control_group),
                self.create_subscription(String, "query_text", self._on_overlay_query_text,
                                         RELIABLE_INPUT, callback_group=self.control_group)]

    def deactivate_io(self) -> None:
        for name in ("cancel_sub", "trigger_sub", "frame_sub"):
            subscription = getattr(self, name)
            if subscription is not None:
                self.destroy_subscription(subscription)
                setattr(self, name, None)
        inputs, self.overlay_inputs = self.overlay_inputs, []
        for subscription in inputs:
            self.destroy_subscription(subscription)
        thread, self._ingest_thread = self._ingest_thread, None
        if thread is not None:
            self._put_frame(None)  # wakes the worker to stop
            if thread is not threading.current_thread():
                thread.join(timeout=30)

    def cleanup_core(self) -> None:
        self.deactivate_io()
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.vlm is not None:
            self.vlm.close()
            self.vlm = None
        for name in ("final_pub", "stream_pub", "text_pub", "overlay_pub"):
            publisher = getattr(self, name)
            if publisher is not None:
                self.destroy_lifecycle_publisher(publisher)
                setattr(self, name, None)
        self.overlay = None

    def check_live(self, updates: Dict[str, Any]) -> None:
        merged = {**self.settings, **updates}
        compose.reaction_config(merged)
        compose.reaction_vlm_config(merged, self.resolved)

    def apply_live(self, updates: Dict[str, Any]) -> None:
        if "max_tokens" in updates:
            self.engine.memory.set_max_tokens(updates["max_tokens"])
        if "evidence_timeout_sec" in updates:
            self.engine.config.evidence_timeout_sec = updates["evidence_timeout_sec"]
        generation = {key: updates[key] for key in GENERATION if key in updates}
        if generation:  # read by the next generate() call
            self.engine.vlm.config = dataclasses.replace(self.engine.vlm.config, **generation)

    # -- data path -----------------------------------------------------------------------
    def _on_frame(self, msg: SampledImage) -> None:
        """Executor thread: queue the sampled frame for the ingest worker (never blocks)."""
        index, last = int(msg.frame_index), self._last_index.get(msg.camera_id)
        if last is not None and index > last + 1:
            self.frames_missed += index - last - 1
        self._last_index[msg.camera_id] = index  # lower: perception restarted its count
        self._put_frame(msg)

    def _put_frame(self, item: Optional[SampledImage]) -> None:
        while True:
            try:
                self._frames.put_nowait(item)
                return
            except queue.Full:  # a backlog after an outage: the oldest frames go first
                try:
                    self._frames.get_nowait()
                    self.frames_backlog_dropped += 1
                except queue.Empty:
                    pass

    def _ingest_loop(self) -> None:
        """Worker thread: decode each sampled frame and encode its visual tokens into memory."""
        while True:
            msg = self._frames.get()
            if msg is None:
                return
            engine = self.engine
            if engine is None:
                continue
            try:
                frame = frame_from_msg(msg, self.conversion)
                engine.ingest(frame, int(msg.clip_index))
            except ImageError as error:
                self.health.fault(f"image_{error.kind}", f"{msg.camera_id}: {error}")
                continue
            except Exception as error:  # the worker must survive anything a frame does
                self.health.fault("ingest", f"{type(error).__name__}: {error}")
                continue
            self._publish_overlay(msg, frame.image)

    def _publish_overlay(self, msg: SampledImage, rgb) -> None:
        """Ingest worker (overlay on): the sampled frame with the questions, the last trigger
        and the answer drawn on it, with the frame's header; at most one per sampled frame."""
        overlay, publisher = self.overlay, self.overlay_pub
        if overlay is None or publisher is None:
            return
        try:
            image = draw_overlay(rgb, overlay.view(to_sec(msg.header.stamp)))  # (H, W, 3) RGB
        except Exception as error:  # a drawing fault must not stop the memory's intake
            self.health.fault("overlay", f"{type(error).__name__}: {error}")
            return
        height, width = image.shape[:2]
        publisher.publish(Image(header=msg.header, height=height, width=width, encoding="rgb8",
                                is_bigendian=0, step=width * 3, data=image.tobytes()))
        self.overlays_published += 1

    def _on_overlay_query(self, msg: Query) -> None:
        overlay = self.overlay
        if overlay is None:
            return
        if msg.cancel:
            overlay.on_cancel(msg.query_id)
            return
        overlay.on_query(msg.query_id, msg.text, msg.mode, to_sec(msg.header.stamp),
                         float(msg.expiry_sec), int(msg.max_responses))

    def _on_overlay_query_text(self, msg: String) -> None:
        overlay = self.overlay
        if overlay is not None:
            overlay.on_query("", msg.data)

    def _on_trigger(self, msg: Trigger) -> None:
        engine = self.engine
        if engine is None:
            return
        overlay = self.overlay
        if overlay is not None:  # before submit: its answer's chunks follow
            overlay.on_trigger(trigger_from_msg(msg))
        try:
            engine.submit(trigger_from_msg(msg))
        except (ValueError, TypeError, RuntimeError) as error:
            self.health.fault("trigger", f"trigger {msg.trigger_id!r}: {error}")
            publisher = self.final_pub  # whoever waits on this trigger still gets its final
            if publisher is not None:
                publisher.publish(Response(
                    header=msg.header, response_id=response_id(msg.trigger_id),
                    trigger_id=msg.trigger_id, query_id=msg.query_id, camera_id=msg.camera_id,
                    final=True, ttft_sec=math.nan, error_code=ErrorCode.NOT_STARTED,
                    error=f"{type(error).__name__}: {error}", history_span_sec=math.nan))

    def _on_cancel(self, msg: Query) -> None:
        """A query the decision node canceled: stop its running answer (within one decode
        step) and end its waiting triggers, each with a final CANCELED."""
        engine = self.engine
        if engine is None:
            return
        if not msg.cancel:
            self.health.fault("cancel", f"query_cancel for {msg.query_id!r} without cancel=true ignored")
            return
        engine.cancel(msg.query_id, up_to_stamp=to_sec(msg.header.stamp))
        overlay = self.overlay
        if overlay is not None:
            overlay.on_cancel(msg.query_id)

    def _on_response(self, event: ResponseEvent) -> None:
        """Worker thread: publish chunks on the stream, finals on response (+ text mirror)."""
        message = response_to_msg(event)
        overlay = self.overlay
        if overlay is not None:
            overlay.on_response(event)
        if not event.final:
            self.stream_pub.publish(message)
            return
        self.final_pub.publish(message)
        if event.error_code != ErrorCode.OK:  # one counter per code: a queue outcome is no model fault
            self.health.fault(ErrorCode(event.error_code).name.lower(),
                              f"response {event.response_id}: {event.error}")
        mirror = f"[{event.query_id}] {event.text}" + (f" (error: {event.error})" if event.error else "")
        self.text_pub.publish(String(data=mirror))

    def status_values(self) -> Dict[str, Any]:
        values: Dict[str, Any] = {"model": self.resolved.get("model", ""),
                                  "frames_backlog": self._frames.qsize(),
                                  "frames_backlog_dropped": self.frames_backlog_dropped,
                                  "frames_missed": self.frames_missed}
        if self.overlay is not None:
            values["overlays_published"] = self.overlays_published
        engine = self.engine
        if engine is not None:
            values.update(engine.stats())
        return values


def main(args=None):
    run(ReactionNode, args)


if __name__ == "__main__":
    main()
